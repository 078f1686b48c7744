import { open as openFile, type FileHandle } from 'node:fs/promises';
import { BLOCK_SIZE, Typeflag, blobHeader, encodeHeaders, padToBlock } from '../tar/header.js';
import { HashReadError, type HashPool } from '../util/hash-pool.js';
import { checkPiecesLength, type BytePiece } from '../util/pieces.js';
import { writeAll, type LayerOutput } from '../layer/writer.js';
import type { Blob } from '../model/image.js';
import type { ArchiveEntry } from './layout.js';

/**
 * A blob whose bytes are not those its digest names, and that could not be mended (it has no `repair`,
 * or the repaired bytes were wrong too). Nothing half-written is left: the output is abandoned.
 */
export class BlobCheckError extends Error {
  constructor(
    readonly digest: string,
    why: string,
  ) {
    super(`blob ${digest}: ${why}`);
    this.name = 'BlobCheckError';
  }
}

/**
 * An archive written into a file by position, member after member: headers and small files as they
 * come, a blob with known bytes copied at its place by a hash pool thread (several at once, checked in
 * the same pass when they came from a cache unread), and a layer being made written straight into its
 * place (`layerOutput`) with its one-block header filled in once its size and digest are known.
 * The same entries give the same bytes as writeArchiveTar streams.
 */
export class ArchiveFile {
  #at = 0;
  readonly #copies: Promise<void>[] = [];
  readonly #names = new Set<string>();

  constructor(
    readonly handle: FileHandle,
    /** The file being written (pieces of layers written into it name it). */
    readonly path: string,
    readonly hashes: HashPool,
    /** The output as the user named it, for messages. */
    readonly label = path,
  ) {}

  /** Bytes planned so far: where the next member starts. */
  get size(): number {
    return this.#at;
  }

  async add(entry: ArchiveEntry): Promise<void> {
    if (this.#names.has(entry.name)) return;
    this.#names.add(entry.name);
    if (entry.kind === 'directory') return this.#small(header(`${entry.name}/`, Typeflag.directory, 0o755, 0));
    if (entry.kind === 'bytes') return this.#small(Buffer.concat([header(entry.name, Typeflag.file, 0o644, entry.bytes.length), padded(entry.bytes)]));
    this.#blob(entry.name, entry.blob);
  }

  /**
   * Where a layer being made goes: its bytes from `out.at` on. Call `placed` with its member name and
   * size once it is written; a layer not placed (a blob already in the archive) is overwritten by what follows.
   */
  layerOutput(): { out: LayerOutput; placed(name: string, size: number): Promise<BytePiece[]> } {
    const headerAt = this.#at;
    const out = { handle: this.handle, at: headerAt + BLOCK_SIZE, path: this.label };
    return {
      out,
      placed: async (name, size) => {
        this.#names.add(name);
        await writeAll(this.handle, blobHeader(name, size), headerAt);
        await this.#pad(out.at + size);
        this.#at = out.at + padToBlock(size);
        return [{ file: this.path, start: out.at, length: size }];
      },
    };
  }

  /**
   * A place for a layer whose size is known before it is made: the members after it are placed (and
   * written) at once. Call `placed` with its member name once it is written.
   */
  reserve(size: number): { out: LayerOutput; size: number; placed(name: string): Promise<BytePiece[]> } {
    const headerAt = this.#at;
    const out = { handle: this.handle, at: headerAt + BLOCK_SIZE, path: this.label };
    this.#at = out.at + padToBlock(size);
    return {
      out,
      size,
      placed: async (name) => {
        this.#names.add(name);
        await writeAll(this.handle, blobHeader(name, size), headerAt);
        await this.#pad(out.at + size);
        return [{ file: this.path, start: out.at, length: size }];
      },
    };
  }

  /** True when an entry of this name was written already. */
  has(name: string): boolean {
    return this.#names.has(name);
  }

  /** Ends the archive (end-of-archive blocks) once every copy is done; the file's exact size. */
  async finish(): Promise<number> {
    await settleAll(this.#copies);
    await this.#small(Buffer.alloc(2 * BLOCK_SIZE));
    await this.handle.truncate(this.#at);
    return this.#at;
  }

  async #small(bytes: Buffer): Promise<void> {
    const at = this.#at;
    this.#at += bytes.length;
    await writeAll(this.handle, bytes, at);
  }

  #blob(name: string, blob: Blob): void {
    const { size, digest } = blob.descriptor;
    if (blob.pieces) checkPiecesLength(blob.pieces, size, digest);
    const at = this.#at;
    this.#at += BLOCK_SIZE + padToBlock(size);
    const copy = (async () => {
      await writeAll(this.handle, blobHeader(name, size), at);
      if (blob.pieces) {
        await copyChecked(blob, (pieces) => this.hashes.run({ pieces, hash: blob.unverified !== undefined, copyTo: { fd: this.handle.fd, at: at + BLOCK_SIZE } }));
      } else {
        await this.#stream(blob, at + BLOCK_SIZE);
      }
      await this.#pad(at + BLOCK_SIZE + size);
    })();
    // Rethrown by finish (or settle) once every copy has ended.
    copy.catch(() => undefined);
    this.#copies.push(copy);
  }

  /** A blob without local bytes (read from an archive or layout): streamed from its source into place. */
  async #stream(blob: Blob, at: number): Promise<void> {
    let written = 0;
    for await (const chunk of blob.open()) {
      const bytes = chunk as Buffer;
      if (written + bytes.length > blob.descriptor.size) break;
      await writeAll(this.handle, bytes, at + written);
      written += bytes.length;
    }
    if (written !== blob.descriptor.size) throw new Error(`blob ${blob.descriptor.digest} gave ${written} bytes or more, its descriptor says ${blob.descriptor.size}`);
  }

  /** Waits for every copy under way (after a failure, before the file is closed). */
  async settle(): Promise<void> {
    await Promise.allSettled(this.#copies);
  }

  /** Zeroes from `end` to the next block boundary (the file may hold other bytes there from a discarded write). */
  async #pad(end: number): Promise<void> {
    const count = padToBlock(end) - end;
    if (count > 0) await writeAll(this.handle, Buffer.alloc(count), end);
  }
}

/**
 * Runs `pass` over a blob's pieces (a copy, a comparison) and, when the blob came from a cache unread,
 * checks the digest the pass computed. A damaged blob is mended in one place: its `repair` makes it
 * again, the pass runs once more on the new pieces, and the blob reads those from then on.
 */
export async function copyChecked(blob: Blob, pass: (pieces: BytePiece[]) => Promise<{ digest: string | null }>): Promise<void> {
  const { digest } = blob.descriptor;
  let why: string;
  try {
    const result = await pass(blob.pieces!);
    if (!blob.unverified || result.digest === digest) return;
    why = `its bytes hash to ${result.digest}`;
  } catch (err) {
    if (!(err instanceof HashReadError) || err.file === '') throw err;
    if (!blob.unverified) throw new BlobCheckError(digest, err.message);
    why = err.message;
  }
  const repair = blob.unverified.repair;
  const pieces = await repair().catch((err: unknown) => {
    throw new BlobCheckError(digest, `${why}; making it again failed: ${(err as Error).message}`);
  });
  const again = await pass(pieces);
  if (again.digest !== null && again.digest !== digest) throw new BlobCheckError(digest, `its bytes hash to ${again.digest} after it was made again`);
  blob.pieces = pieces;
  delete blob.unverified;
}

/** Checks (and mends) every blob that came from a cache unread, before it is streamed where nothing can be taken back. */
export async function verifyBlobs(blobs: Blob[], hashes: HashPool): Promise<void> {
  await settleAll(blobs.filter((b) => b.unverified && b.pieces).map((blob) => copyChecked(blob, (pieces) => hashes.sha256(pieces))));
}

/**
 * True when `path` already holds exactly the archive `entries` make: then it need not be written again.
 * Reading both sides from the page cache costs a fraction of writing (and of freeing the old file's
 * pages, which replacing it does): a rebuild in which nothing changed leaves its output as it was.
 * Blobs that came from a cache unread are checked in the same pass.
 */
export async function archiveFileMatches(entries: ArchiveEntry[], path: string, hashes: HashPool): Promise<boolean> {
  if (!entries.every((e) => e.kind !== 'blob' || e.blob.pieces)) return false;
  const { small, blobs, size } = planArchive(entries);
  let target: FileHandle;
  try {
    target = await openFile(path, 'r');
  } catch {
    return false;
  }
  try {
    const st = await target.stat();
    if (!st.isFile() || st.size !== size) return false;
    for (const { at, bytes } of small) {
      const have = Buffer.allocUnsafe(bytes.length);
      const { bytesRead } = await target.read(have, 0, bytes.length, at);
      if (bytesRead !== bytes.length || !have.equals(bytes)) return false;
    }
    let same = true;
    await settleAll(
      blobs.map(({ blob, at }) =>
        copyChecked(blob, async (pieces) => {
          if (!same) return { digest: blob.descriptor.digest };
          const result = await hashes.run({ pieces, hash: blob.unverified !== undefined, compareWith: { fd: target.fd, at } });
          if (!result.same) same = false;
          // A mismatch of the comparison is no damage: the output differs, and is written anew.
          return { digest: result.same ? result.digest : blob.descriptor.digest };
        }),
      ),
    );
    return same;
  } catch (err) {
    if (err instanceof BlobCheckError) throw err;
    return false;
  } finally {
    await target.close();
  }
}

/** The archive's layout by position, as ArchiveFile writes it: headers and small files, and where each blob goes. */
function planArchive(entries: ArchiveEntry[]): { small: { at: number; bytes: Buffer }[]; blobs: { blob: Blob; at: number }[]; size: number } {
  const small: { at: number; bytes: Buffer }[] = [];
  const blobs: { blob: Blob; at: number }[] = [];
  let at = 0;
  const put = (bytes: Buffer) => {
    small.push({ at, bytes });
    at += bytes.length;
  };
  for (const entry of entries) {
    if (entry.kind === 'directory') put(header(`${entry.name}/`, Typeflag.directory, 0o755, 0));
    else if (entry.kind === 'bytes') put(Buffer.concat([header(entry.name, Typeflag.file, 0o644, entry.bytes.length), padded(entry.bytes)]));
    else {
      const size = entry.blob.descriptor.size;
      put(blobHeader(entry.name, size));
      blobs.push({ blob: entry.blob, at });
      at += size;
      if (padToBlock(size) > size) put(Buffer.alloc(padToBlock(size) - size));
    }
  }
  put(Buffer.alloc(2 * BLOCK_SIZE));
  return { small, blobs, size: at };
}

function header(name: string, typeflag: Typeflag, mode: number, size: number): Buffer {
  return encodeHeaders({ name, typeflag, mode, size, mtime: 0, linkname: '' });
}

function padded(bytes: Buffer): Buffer {
  const pad = padToBlock(bytes.length) - bytes.length;
  return pad > 0 ? Buffer.concat([bytes, Buffer.alloc(pad)]) : bytes;
}

/** Waits for every promise; rethrows the first failure once all have settled (none outlives the output). */
async function settleAll(promises: Promise<unknown>[]): Promise<void> {
  const outcomes = await Promise.allSettled(promises);
  const failure = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
  if (failure) throw failure.reason;
}
