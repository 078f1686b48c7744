import { link, mkdir, open, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { UserError } from '../util/errors.js';
import { copyInto } from '../util/streams.js';
import { outputError, PendingDirectory, PendingFile } from '../util/atomic.js';
import { defaultHashPool, type HashPool } from '../util/hash-pool.js';
import { checkPiecesLength, type BytePiece } from '../util/pieces.js';
import { writeBlobFile, type LayerOutput, type Written } from '../layer/writer.js';
import { layerOf, type Blob, type Compression, type Image, type Layer } from '../model/image.js';
import { writeArchiveTar } from './archive-tar.js';
import { ArchiveFile, archiveFileMatches, copyChecked, verifyBlobs } from './archive-file.js';
import type { OutputFormat } from '../model/formats.js';
import { archiveEntries, archiveLayout, ociLayoutEntries, type ArchiveEntry } from './layout.js';

export type { OutputFormat } from '../model/formats.js';
export { OUTPUT_FORMATS, parseOutputFormat } from '../model/formats.js';

export interface OutputOptions {
  format: OutputFormat;
  /** A file or directory path, or `-` for standard output (archives only); null for none (a push alone). */
  output: string | null;
  /** Where `-` writes (default process.stdout). */
  stdout?: Writable | NodeJS.WritableStream;
  hashes?: HashPool;
  /** Where layers wait that cannot go to their final place yet (default: a temp directory is not made: required when layers are written). */
  workDir?: string;
}

/** What a layer being written is, besides its bytes. */
export interface LayerMeta {
  contents: string[];
  compression: Compression;
}

/**
 * An image being written to its output. Layers made by the build go straight to their final place
 * where it is known (`writeLayer`); then `finish` writes the rest (layers that already had bytes, the
 * config, the manifest, the indexes) and makes the output appear whole, atomically. An error or an
 * interrupted process leaves no output and no temporary file.
 */
export interface ImageOutput {
  /**
   * Writes layer `index` (of the image's layers, in order) with `write`, into its place in the output
   * when it is its turn, else into a work file until its turn comes.
   */
  writeLayer(index: number, meta: LayerMeta, write: (out: LayerOutput) => Promise<Written>): Promise<Layer>;
  /**
   * What uncompressed layers will measure, by index, for those known before they are made: an archive
   * then places them as soon as the layers before them are placed, and they are written alongside others.
   */
  expectSizes?(sizes: (number | undefined)[]): void;
  finish(image: Image): Promise<void>;
  abandon(): Promise<void>;
}

export async function openOutput(options: OutputOptions): Promise<ImageOutput> {
  const hashes = options.hashes ?? defaultHashPool();
  const { format, output } = options;
  if (output === '-' && format === 'oci-layout') throw new UserError('--format oci-layout writes a directory and cannot go to standard output; use oci-archive');
  if (output === null || output === '-') return new WorkOutput(options.workDir, hashes, output === '-' ? { format: format as 'oci-archive' | 'docker-archive', stdout: options.stdout ?? process.stdout } : null);
  if (format === 'oci-layout') return LayoutOutput.create(output, hashes);
  return ArchiveOutput.create(output, format, hashes, options.workDir);
}

/** Writes an image whose layers all have their bytes already (from a cache, a work directory, an archive). */
export async function writeImage(image: Image, options: OutputOptions): Promise<void> {
  const { format, output } = options;
  const hashes = options.hashes ?? defaultHashPool();
  // Already these very bytes (a rebuild where nothing changed): left in place, only its mtime renewed.
  if (output && output !== '-' && format !== 'oci-layout' && (await archiveFileMatches(archiveEntries(image, format), output, hashes))) {
    const now = new Date();
    await utimes(output, now, now).catch((err: unknown) => {
      throw outputError(output, err);
    });
    return;
  }
  const out = await openOutput(options);
  try {
    await out.finish(image);
  } catch (err) {
    await out.abandon();
    throw err;
  }
}

/**
 * An archive file, its layers written into it in order. The layer whose turn it is writes straight into
 * its place; a compressed one made ahead of its turn (so that every core is busy) waits in a work file
 * and is copied in when its turn comes, so only its compressed bytes are copied. An uncompressed layer
 * would be copied whole: it waits for its turn instead. One whose size is known then gets its place at
 * once, and the next layer's turn comes while it is being written.
 */
class ArchiveOutput implements ImageOutput {
  #next = 0;
  #direct = false;
  readonly #ahead = new Map<number, Layer>();
  /** Uncompressed layers waiting for their turn, by index; and why none will come, once a layer failed. */
  readonly #waiting = new Map<number, { resolve: () => void; reject: (error: unknown) => void }>();
  #failed: { error: unknown } | null = null;
  /** Sizes known before the layers are made (expectSizes), and the places set aside for them. */
  #sizes: (number | undefined)[] = [];
  readonly #reserved = new Map<number, ReturnType<ArchiveFile['reserve']>>();
  /** Layers whose bytes are in the archive being written, by member name. */
  readonly #inArchive = new Map<string, BytePiece[]>();

  private constructor(
    readonly pending: PendingFile,
    readonly archive: ArchiveFile,
    readonly format: 'oci-archive' | 'docker-archive',
    readonly workDir: string | undefined,
  ) {}

  static async create(path: string, format: 'oci-archive' | 'docker-archive', hashes: HashPool, workDir: string | undefined): Promise<ArchiveOutput> {
    const pending = await PendingFile.open(path);
    const output = new ArchiveOutput(pending, new ArchiveFile(pending.handle, pending.temp, hashes, path), format, workDir);
    try {
      for (const entry of archiveLayout(format).leading) await output.archive.add(entry);
    } catch (err) {
      await pending.abandon();
      throw outputError(path, err);
    }
    return output;
  }

  expectSizes(sizes: (number | undefined)[]): void {
    this.#sizes = sizes;
    this.#wake();
  }

  async writeLayer(index: number, meta: LayerMeta, write: (out: LayerOutput) => Promise<Written>): Promise<Layer> {
    return this.#writeLayer(index, meta, write).catch((err: unknown) => {
      // The layers waiting for their turn wait no more.
      this.#fail(err);
      throw outputError(this.pending.target, err);
    });
  }

  async #writeLayer(index: number, meta: LayerMeta, write: (out: LayerOutput) => Promise<Written>): Promise<Layer> {
    if (meta.compression === 'none') {
      // Placed as soon as the layers before it are (its size was known), or written in its turn: a layer
      // made ahead would be copied whole.
      await this.#turn(index);
      const place = this.#reserved.get(index);
      if (place) return this.#writePlaced(index, meta, write, place);
    } else if (index !== this.#next || this.#direct) {
      if (!this.workDir) throw new Error('a layer ahead of its turn needs a work directory');
      const file = await writeBlobFile(this.workDir, write);
      const layer = recordOf(file, meta, file.pieces);
      this.#ahead.set(index, layer);
      await this.#placeAhead();
      return layer;
    }
    this.#direct = true;
    let layer: Layer;
    try {
      const place = this.archive.layerOutput();
      const written = await write(place.out);
      layer = recordOf(written, meta, []);
      const name = archiveLayout(this.format).layerName(layer);
      // A layer already in the archive (the same blob twice): its bytes here are overwritten by what follows.
      const known = this.#inArchive.get(name);
      if (known) {
        layer.pieces = known;
      } else {
        layer.pieces = await place.placed(name, written.size);
        this.#inArchive.set(name, layer.pieces);
      }
      this.#next++;
    } finally {
      this.#direct = false;
    }
    this.#wake();
    await this.#placeAhead();
    return layer;
  }

  /** A layer written into the place set aside for it. */
  async #writePlaced(index: number, meta: LayerMeta, write: (out: LayerOutput) => Promise<Written>, place: ReturnType<ArchiveFile['reserve']>): Promise<Layer> {
    this.#reserved.delete(index);
    const written = await write(place.out);
    if (written.size !== place.size) throw new Error(`layer ${index + 1} is ${written.size} bytes, ${place.size} were set aside for it`);
    const layer = recordOf(written, meta, []);
    const name = archiveLayout(this.format).layerName(layer);
    // The same blob twice (as in #writeLayer): its place is taken already, so this one is a second member of that name.
    layer.pieces = await place.placed(name);
    if (!this.#inArchive.has(name)) this.#inArchive.set(name, layer.pieces);
    return layer;
  }

  /** Resolves when every layer before `index` has its place (and `index` too, when its size was known). */
  #turn(index: number): Promise<void> {
    if (this.#failed) return Promise.reject(this.#failed.error);
    if (this.#reserved.has(index) || (index === this.#next && !this.#direct)) return Promise.resolve();
    return new Promise((resolve, reject) => this.#waiting.set(index, { resolve, reject }));
  }

  /** The next layer's turn: layers of known size are placed at once, and whoever waits for them or for the next turn is woken. */
  #wake(): void {
    if (this.#direct) return;
    for (let size = this.#sizes[this.#next]; size !== undefined; size = this.#sizes[this.#next]) {
      this.#reserved.set(this.#next, this.archive.reserve(size));
      this.#resolve(this.#next);
      this.#next++;
    }
    this.#resolve(this.#next);
  }

  #resolve(index: number): void {
    const waiter = this.#waiting.get(index);
    if (!waiter) return;
    this.#waiting.delete(index);
    waiter.resolve();
  }

  #fail(error: unknown): void {
    this.#failed ??= { error };
    for (const waiter of this.#waiting.values()) waiter.reject(error);
    this.#waiting.clear();
  }

  /** Copies in the layers made ahead whose turn has come. */
  async #placeAhead(): Promise<void> {
    while (!this.#direct && this.#ahead.has(this.#next)) {
      const layer = this.#ahead.get(this.#next)!;
      this.#ahead.delete(this.#next);
      this.#next++;
      const name = archiveLayout(this.format).layerName(layer);
      if (!this.archive.has(name)) await this.archive.add({ kind: 'blob', name, blob: layer });
    }
  }

  async finish(image: Image): Promise<void> {
    const layout = archiveLayout(this.format);
    for (const layer of image.layers) {
      const name = layout.layerName(layer);
      if (!this.archive.has(name)) await this.archive.add({ kind: 'blob', name, blob: layer });
    }
    try {
      for (const entry of layout.trailing(image)) await this.archive.add(entry);
      await this.archive.finish();
    } catch (err) {
      throw outputError(this.pending.target, err);
    }
    await this.pending.commit();
    // Layers written into the archive are read from it from now on (a push after the build).
    repoint(image.layers, this.pending.temp, this.pending.target);
  }

  async abandon(): Promise<void> {
    this.#fail(new Error('the archive was abandoned'));
    await this.archive.settle();
    await this.pending.abandon();
  }
}

/** An OCI layout directory: every layer written straight into its blob file, in any order. */
class LayoutOutput implements ImageOutput {

  private constructor(
    readonly pending: PendingDirectory,
    readonly hashes: HashPool,
  ) {}

  static async create(path: string, hashes: HashPool): Promise<LayoutOutput> {
    const pending = await PendingDirectory.create(path);
    await mkdir(join(pending.temp, 'blobs/sha256'), { recursive: true });
    return new LayoutOutput(pending, hashes);
  }

  get blobs(): string {
    return join(this.pending.temp, 'blobs/sha256');
  }

  async writeLayer(_index: number, meta: LayerMeta, write: (out: LayerOutput) => Promise<Written>): Promise<Layer> {
    const file = await writeBlobFile(this.blobs, write, this.pending.target);
    return recordOf(file, meta, file.pieces);
  }

  async finish(image: Image): Promise<void> {
    await writeEntriesToDirectory(ociLayoutEntries(image), this.pending.temp, this.hashes).catch((err: unknown) => {
      throw outputError(this.pending.target, err);
    });
    await this.pending.commit();
    repoint(image.layers, this.pending.temp, this.pending.target);
  }

  async abandon(): Promise<void> {
    await this.pending.abandon();
  }
}

/** No file output: layers wait in the work directory (for a push), or the archive is streamed to stdout. */
class WorkOutput implements ImageOutput {

  constructor(
    readonly workDir: string | undefined,
    readonly hashes: HashPool,
    readonly stream: { format: 'oci-archive' | 'docker-archive'; stdout: Writable | NodeJS.WritableStream } | null,
  ) {}

  async writeLayer(_index: number, meta: LayerMeta, write: (out: LayerOutput) => Promise<Written>): Promise<Layer> {
    if (!this.workDir) throw new Error('layers without an output need a work directory');
    const file = await writeBlobFile(this.workDir, write);
    return recordOf(file, meta, file.pieces);
  }

  async finish(image: Image): Promise<void> {
    // A stream cannot be taken back, and a registry refuses a blob whose bytes are not its digest:
    // blobs from the cache are checked (and made again if damaged) before anything goes out.
    await verifyBlobs(image.layers, this.hashes);
    if (!this.stream) return;
    await writeArchiveTar(archiveEntries(image, this.stream.format), this.stream.stdout).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') throw new UserError('standard output was closed before the archive was written', { cause: err });
      throw err;
    });
  }

  async abandon(): Promise<void> {}
}

function recordOf(written: Written, meta: LayerMeta, pieces: BytePiece[]): Layer {
  return layerOf({
    digest: written.digest,
    size: written.size,
    diffId: written.diffId,
    uncompressedSize: written.tarSize,
    compression: meta.compression,
    pieces,
    contents: meta.contents,
  });
}

/** Pieces in files under `from` now lie under `to` (an output renamed into place). */
function repoint(blobs: Blob[], from: string, to: string): void {
  for (const blob of blobs) {
    blob.pieces = blob.pieces?.map((p) => ('file' in p && (p.file === from || p.file.startsWith(`${from}/`)) ? { ...p, file: to + p.file.slice(from.length) } : p));
  }
}

async function writeEntriesToDirectory(entries: ArchiveEntry[], dir: string, hashes: HashPool): Promise<void> {
  for (const entry of entries) {
    const path = join(dir, entry.name);
    if (entry.kind === 'directory') {
      await mkdir(path, { recursive: true });
    } else if (entry.kind === 'bytes') {
      await writeFile(path, entry.bytes, { mode: 0o644 });
    } else if (!(await exists(path))) {
      await writeBlobFileFrom(entry.blob, path, hashes);
    }
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/**
 * A blob that lies whole in one file is hard-linked (blobs are content-addressed and never written to
 * again), and checked if it came from a cache unread; otherwise, or across file systems, its pieces are
 * copied (and checked) in one pass; a blob without local bytes is streamed.
 */
async function writeBlobFileFrom(blob: Blob, path: string, hashes: HashPool): Promise<void> {
  const { size, digest } = blob.descriptor;
  if (!blob.pieces) return streamBlobFile(blob, path);
  checkPiecesLength(blob.pieces, size, digest);
  const only = blob.pieces.length === 1 ? blob.pieces[0]! : null;
  if (only && !('bytes' in only) && only.start === 0 && only.length === size) {
    const linked = await stat(only.file).then(
      (st) => st.size === only.length && link(only.file, path).then(() => true, () => false),
      () => false,
    );
    if (linked) {
      if (blob.unverified) {
        await copyChecked(blob, async (pieces) => {
          if (pieces !== blob.pieces) await copyPieces(pieces, path, hashes, true);
          return hashes.sha256(pieces);
        });
      }
      return;
    }
  }
  await copyChecked(blob, (pieces) => copyPieces(pieces, path, hashes, blob.unverified !== undefined));
}

/** Writes the pieces to `path` (replacing what is there), hashing them on the way if asked. */
async function copyPieces(pieces: BytePiece[], path: string, hashes: HashPool, hash: boolean): Promise<{ digest: string | null }> {
  await rm(path, { force: true });
  const out = await open(path, 'wx', 0o644);
  try {
    return await hashes.run({ pieces, hash, copyTo: { fd: out.fd, at: 0 } });
  } finally {
    await out.close();
  }
}

async function streamBlobFile(blob: Blob, path: string): Promise<void> {
  const handle = await open(path, 'wx', 0o644);
  const out = handle.createWriteStream();
  // Kept for the end: a write error between our writes must not be an unhandled 'error' event.
  let failure: Error | undefined;
  out.on('error', (err) => (failure ??= err));
  try {
    const copied = await copyInto(blob.open(), out);
    if (copied !== blob.descriptor.size) {
      throw new Error(`blob ${blob.descriptor.digest} gave ${copied} bytes, its descriptor says ${blob.descriptor.size}`);
    }
    await new Promise<void>((resolve, reject) => {
      out.end(() => (failure ? reject(failure) : resolve()));
      out.once('close', () => (failure ? reject(failure) : resolve()));
    });
  } catch (err) {
    out.destroy();
    throw failure ?? err;
  }
}

