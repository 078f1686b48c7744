import { createHash } from 'node:crypto';
import { copyFile, link, open, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { StorePathInfo } from '../nix/types.js';
import { storePathsEnds, storePathsSource } from '../layer/store-paths.js';
import { countingSource } from '../layer/counting-source.js';
import type { LayerSource } from '../layer/types.js';
import { codecOf, type Turns } from '../layer/codec.js';
import { END_OF_ARCHIVE, type LayerFormat } from '../layer/format.js';
import { tarSegment, writeBlobFile, writeLayer, type LayerFile, type LayerOutput, type Written } from '../layer/writer.js';
import { measureLayer } from '../layer/diff-id.js';
import { layerOf, type Layer } from '../model/image.js';
import type { HashPool } from '../util/hash-pool.js';
import type { BytePiece } from '../util/pieces.js';
import { UserError } from '../util/errors.js';
import { storePathPartKey, storePathsLayerKey } from './keys.js';
import { CacheStore, digestHex, isDigest, isRecord, isSize } from './store.js';
import { byCodeUnits } from '../util/order.js';

/**
 * A store path's cached part: its tar segment in stored form, kept in a blob file that is a whole
 * layer by itself — the layer head's member, the part's members, the end member — so a path that makes
 * a layer alone needs nothing but that file. The part's bytes are `size` bytes at `offset` in blob `blob`
 * (the blob's name is its sha256, which is how the part is checked). `storePath` is for people reading.
 */
interface PartEntry {
  blob: string;
  offset: number;
  size: number;
  tarSize: number;
  storePath?: string;
}
/** A layer composed of parts; its diffID cannot be derived from the parts' hashes, so it is kept. */
interface LayerEntry {
  digest: string;
  size: number;
  diffId: string;
  uncompressedSize: number;
}
interface ComposedEntry extends LayerEntry {
  /** The blob of each part the layer was composed of, and sha256 of the head and end members together. */
  parts: string[];
  frame: string;
}
interface WheelEntry extends LayerEntry {
  /** Whatever the wheel stage needs from the pass that wrote the layer (the ELF facts). */
  facts: unknown;
}

const isPartEntry = (v: unknown): v is PartEntry =>
  isRecord(v) && isDigest(v.blob) && isSize(v.offset) && isSize(v.size) && isSize(v.tarSize);
const isLayerEntry = (v: unknown): v is LayerEntry =>
  isRecord(v) && isDigest(v.digest) && isSize(v.size) && isDigest(v.diffId) && isSize(v.uncompressedSize);
const isWheelEntry = (v: unknown): v is WheelEntry => isLayerEntry(v) && 'facts' in v;
/** A layer blob measured (decompressed and hashed), filed under its digest: what its tar is. */
type Measurement = Pick<LayerEntry, 'digest' | 'diffId' | 'uncompressedSize'>;
const isMeasurement = (v: unknown): v is Measurement => isRecord(v) && isDigest(v.digest) && isDigest(v.diffId) && isSize(v.uncompressedSize);

/** What a layer entry proved to be when checked against its blob. */
type Trust = 'holds' | 'lies' | 'damaged';
const isComposedEntry = (v: unknown): v is ComposedEntry =>
  isLayerEntry(v) && Array.isArray((v as ComposedEntry).parts) && (v as ComposedEntry).parts.every(isDigest) && isDigest((v as ComposedEntry).frame);

/** Parts of one layer being compressed at once while the next are tarred (each holds a few MiB). */
const PARTS_WRITING = 2;

/** A layer the cache served or made; `reused` when every byte came from the cache (nothing was compressed). */
export interface Served {
  layer: Layer;
  reused: boolean;
}

/**
 * Another way to write a whole layer of the cache's format into `out` (a wheel's uncompressed layer,
 * written whole by an unzip thread), or null when it cannot: the source is written instead.
 */
export type DirectWrite = (out: LayerOutput) => Promise<Written> | null;

/**
 * Wraps layer production with the cache. A store-path layer is composed of parts, one per store path:
 *
 *   [frame: `nix/`, `nix/store/` headers] [frames: path 1's entries] … [frame: the end-of-archive blocks]
 *
 * Each part is a store path's tar segment compressed as frames of its own, cached by the path's NAR hash
 * and the format. A layer of one path is the same blob however the cache was filled, and regrouping
 * paths under --max-layers recompresses nothing. The uncompressed tar is exactly what
 * `storePathsSource` writes, so diffIDs do not depend on the cache either. Other layers (wheels) are
 * cached whole under a key of what decides their bytes.
 *
 * A served layer is never copied together: its bytes are pieces (head bytes, ranges of the parts' blob
 * files, end bytes), the files hard-linked into the build's work directory so that a concurrent
 * `cache prune` cannot take them away. A hit costs a few small reads; its bytes are checked against its
 * digest by whoever reads them, in the pass that copies them, and a damaged blob is mended in one
 * place: the layer's `unverified.repair` drops what served it and makes the layer again.
 *
 * The layer's diffID is the sha256 of the concatenated tar segments. sha256 cannot be resumed from the
 * parts' hashes, so for a grouping not seen before the cached parts are re-tarred from the export into
 * one hash — reading NARs and encoding tar runs near disk speed; compression is the expensive step, and
 * it is skipped. The result is cached per grouping.
 */
export class LayerCache {
  #head: Promise<{ tar: Buffer; stored: Buffer; frame: string }> | null = null;
  #end: Buffer;
  /** Blob files hard-linked into the work directory so far, by digest. */
  #linked = new Map<string, Promise<string | null>>();
  #links = 0;
  readonly #stored: (bytes: Buffer) => Buffer;

  constructor(
    readonly store: CacheStore,
    readonly format: LayerFormat,
    /** Where cached blobs are linked for the build (the build's work directory). */
    readonly workDir: string,
    readonly options: {
      /** Compression turns shared by the build's layers (`--jobs`). */
      turns?: Turns;
      /** Checks blobs and hashes compositions. */
      hashes: HashPool;
      /**
       * Runs the part of a layer that tars and compresses, e.g. within `--jobs` at a time. Lookups run
       * outside it: a warm build is many small reads and hash jobs, and waits on them in parallel.
       */
      limitBuilds?: <T>(task: () => Promise<T>) => Promise<T>;
      /** Hears of entries that proved wrong (they are dropped and their layers made again). */
      warn?: (line: string) => void;
    },
  ) {
    const codec = codecOf(format);
    this.#stored = codec ? (bytes) => codec.frameSync(bytes) : (bytes) => bytes;
    this.#end = this.#stored(END_OF_ARCHIVE);
  }

  #limited<T>(task: () => Promise<T>): Promise<T> {
    return this.options.limitBuilds ? this.options.limitBuilds(task) : task();
  }

  /** `onBytes` hears of the file contents tarred, when the layer is (re)made rather than found. */
  async storePathLayer(infos: StorePathInfo[], onBytes?: (bytes: number) => void): Promise<Served> {
    return (await this.#storePathLayer(infos, onBytes, false))!;
  }

  /** The layer when the cache holds it whole (a hit, as `storePathLayer` serves it); null, making nothing, otherwise. */
  findStorePathLayer(infos: StorePathInfo[]): Promise<Served | null> {
    return this.#storePathLayer(infos, undefined, true);
  }

  async #storePathLayer(infos: StorePathInfo[], onBytes: ((bytes: number) => void) | undefined, lookupOnly: boolean): Promise<Served | null> {
    storePathsSource(infos); // checks the paths, as a cold write would
    const sorted = [...infos].sort((a, b) => byCodeUnits(a.path, b.path));
    const partKeys = sorted.map((info) => storePathPartKey(info, this.format));
    const layerKey = storePathsLayerKey(infos, this.format);
    const head = await this.#headPart();
    const contents = sorted.map((info) => info.path);

    // A damaged or missing part is dropped and the layer tried again, which rebuilds it.
    for (let attempt = 0; attempt < 3; attempt++) {
      const reading = this.store.readEntry('layers', layerKey, isComposedEntry);
      // A lookup ends at a missing layer entry (a fresh runner's every layer): its parts cannot make a hit.
      if (lookupOnly && (await reading) === null) return null;
      const [known, parts] = await Promise.all([reading, Promise.all(partKeys.map((key) => this.store.readEntry('parts', key, isPartEntry)))]);
      if (known && parts.every((p): p is PartEntry => p !== null)) {
        const same = known.frame === head.frame && known.parts.length === parts.length && parts.every((p, i) => p.blob === known.parts[i]);
        const pieces = same ? await this.#pieces(head.stored, parts) : null;
        const trust = pieces && (await fileSizesHold(pieces)) ? await this.#trust(known, pieces, `layers/${layerKey}.json`) : 'damaged';
        if (trust === 'lies') {
          await this.store.removeEntry('layers', layerKey);
          continue;
        }
        if (pieces && trust === 'holds') {
          await Promise.all([this.store.touch('layers', layerKey), ...partKeys.map((key) => this.store.touch('parts', key))]);
          // Not read here: whoever reads the bytes checks them, and asks `repair` when they are damaged.
          const repair = async () => {
            await this.#dropDamaged(layerKey, partKeys, parts);
            return this.#remade(await this.storePathLayer(infos, onBytes), known.digest);
          };
          return { layer: this.#layer(pieces, known, contents, repair), reused: true };
        }
        await this.#dropDamaged(layerKey, partKeys, parts);
        continue;
      }

      if (lookupOnly) return null;
      const made = await this.#limited(() => this.#make(sorted, partKeys, parts, head, onBytes));
      if (made === null) continue;
      await this.#vouch(made.entry);
      await this.store.writeEntry('layers', layerKey, made.entry);
      return { layer: this.#layer(made.pieces, made.entry, contents), reused: made.built === 0 };
    }
    throw new UserError(`cache ${this.store.dir}: store path parts keep failing their checks; remove the cache directory or use --no-cache`);
  }

  /**
   * Makes a layer from its parts, writing those missing (tar → diffID → compress → digest, one pass) and
   * re-tarring those cached into the diffID. Null when a part proved stale or went missing: it is
   * dropped, and the caller tries again.
   */
  async #make(
    sorted: StorePathInfo[],
    partKeys: string[],
    parts: (PartEntry | null)[],
    head: { tar: Buffer; stored: Buffer; frame: string },
    onBytes?: (bytes: number) => void,
  ): Promise<{ entry: ComposedEntry; pieces: BytePiece[]; built: number } | null> {
    // Parts found in the cache are checked before a new layer is made of them: its digest is recorded.
    await this.#dropParts(partKeys, parts, await this.#damaged(parts));

    const diff = createHash('sha256').update(head.tar);
    let built = 0;
    const stale: number[] = [];
    // The tar goes through `diff` in order, one path after the other; a path's compression goes on while
    // the next paths are tarred, so a layer of many small paths keeps every core busy too.
    const writes: Promise<void>[] = [];
    let failed = false;
    for (const [i, info] of sorted.entries()) {
      if (failed) break;
      const source = countingSource(storePathsSource([info], { storeDirEntries: false }), onBytes);
      const cached = parts[i];
      if (cached) {
        const tarSize = await tarSegment(source, this.format.mtime, (bytes) => diff.update(bytes));
        if (tarSize !== cached.tarSize) stale.push(i);
        continue;
      }
      // At most PARTS_WRITING at once; a failure is noted in `failed` and rethrown once all have settled.
      if (writes.length >= PARTS_WRITING) await writes[writes.length - PARTS_WRITING]!.catch(() => {});
      let tarred!: () => void;
      const tarDone = new Promise<void>((resolve) => (tarred = resolve));
      const written = this.#writePart(source, partKeys[i]!, info.path, diff, head.stored, tarred).then((entry) => {
        parts[i] = entry;
      });
      written.catch(() => (failed = true));
      writes.push(written);
      await Promise.race([tarDone, written]);
      built++;
    }
    // Every write settles before this returns (or throws), so none outlives the build's directories.
    const outcomes = await Promise.allSettled(writes);
    const failure = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
    if (failure) throw failure.reason;
    if (stale.length > 0) {
      await this.#dropParts(partKeys, parts, stale);
      return null;
    }
    diff.update(END_OF_ARCHIVE);
    const complete = parts as PartEntry[];
    const pieces = await this.#pieces(head.stored, complete);
    if (!pieces) return null; // a part went missing meanwhile (a concurrent prune): the next attempt rebuilds it
    // One part: its blob file is the layer, named by its digest. Several: the composition is hashed.
    const digest = complete.length === 1 ? complete[0]!.blob : (await this.options.hashes.sha256(pieces)).digest;
    const entry: ComposedEntry = {
      parts: complete.map((p) => p.blob),
      frame: head.frame,
      digest,
      size: head.stored.length + complete.reduce((n, p) => n + p.size, 0) + this.#end.length,
      diffId: `sha256:${diff.digest('hex')}`,
      uncompressedSize: head.tar.length + complete.reduce((n, p) => n + p.tarSize, 0) + END_OF_ARCHIVE.length,
    };
    return { entry, pieces, built };
  }

  /**
   * A whole layer cached under `key` (a wheel's), with `facts` the build keeps beside it. On a miss
   * `source` is written into the cache and `facts` asked for once it has been.
   */
  async wholeLayer<F>(key: string, contents: string[], source: LayerSource, facts: () => Promise<F>, direct?: DirectWrite): Promise<Served & { facts: F }> {
    return (await this.#wholeLayer(key, contents, source, facts, false, direct))!;
  }

  /** The whole layer under `key` when the cache holds it; null, making nothing, otherwise. */
  findWholeLayer<F>(key: string, contents: string[], source: LayerSource, facts: () => Promise<F>): Promise<(Served & { facts: F }) | null> {
    return this.#wholeLayer(key, contents, source, facts, true);
  }

  async #wholeLayer<F>(key: string, contents: string[], source: LayerSource, facts: () => Promise<F>, lookupOnly: boolean, direct?: DirectWrite): Promise<(Served & { facts: F }) | null> {
    const known = await this.store.readEntry('wheels', key, isWheelEntry);
    if (known) {
      const file = await this.#link(known.digest);
      const pieces: BytePiece[] = file ? [{ file, start: 0, length: known.size }] : [];
      const trust = file && (await sizeOf(file)) === known.size ? await this.#trust(known, pieces, `wheels/${key}.json`) : 'damaged';
      if (trust === 'holds') {
        await this.store.touch('wheels', key);
        const repair = async () => {
          await this.store.removeEntry('wheels', key, known.digest);
          this.#linked.delete(known.digest);
          return this.#remade(await this.wholeLayer(key, contents, source, facts), known.digest);
        };
        return { layer: this.#layer(pieces, known, contents, repair), reused: true, facts: known.facts as F };
      }
      // An entry that lied names a sound blob, which the layer made again is (by rename) anyway.
      await this.store.removeEntry('wheels', key, trust === 'damaged' ? known.digest : undefined);
      this.#linked.delete(known.digest);
    }
    if (lookupOnly) return null;
    const turns = this.options.turns;
    const written: LayerFile = await this.#limited(() => writeBlobFile(this.store.tempDir, (out) => direct?.(out) ?? writeLayer(source, this.format, out, { turns })));
    await this.store.adoptBlob(written.file, written.digest);
    const found = await facts();
    const entry: WheelEntry = { digest: written.digest, size: written.size, diffId: written.diffId, uncompressedSize: written.tarSize, facts: found };
    await this.#vouch(entry);
    await this.store.writeEntry('wheels', key, entry);
    const file = await this.#link(written.digest);
    if (!file) throw new Error(`cache blob ${written.digest} vanished as it was stored`);
    return { layer: this.#layer([{ file, start: 0, length: written.size }], entry, contents), reused: false, facts: found };
  }

  /**
   * Whether a cached entry's diffID and size are those of its blob's tar. Its blob's digest is checked
   * by whoever reads the bytes, but nothing reading them sees the diffID, which goes into the image
   * config as it is: an entry that names the right blob with the wrong diffID (edited, or written by a
   * faulty build) would make a wrong image. A blob is measured (decompressed and hashed) once, and the
   * measurement filed by its digest; entries this cache writes file their own, from the pass that
   * wrote the blob, so a warm build reads one small file per layer. Uncompressed layers need no
   * reading: their diffID is their digest.
   */
  async #trust(entry: LayerEntry, pieces: BytePiece[], where: string): Promise<Trust> {
    const says = `${where} says ${entry.digest} holds a tar of ${entry.uncompressedSize} bytes with diffID ${entry.diffId}`;
    if (this.format.compression === 'none') {
      if (entry.diffId === entry.digest && entry.uncompressedSize === entry.size) return 'holds';
      this.options.warn?.(`the layer cache's entry ${says}, but an uncompressed layer's diffID is its digest; the layer was made again`);
      return 'lies';
    }
    const known = await this.store.readEntry('verified', digestHex(entry.digest), isMeasurement);
    if (known && known.digest === entry.digest && known.diffId === entry.diffId && known.uncompressedSize === entry.uncompressedSize) return 'holds';
    let measured: Measurement;
    try {
      measured = await measureLayer(pieces, this.format.compression);
    } catch {
      return 'damaged'; // unreadable or not a valid stream: dropped like a blob failing its digest
    }
    if (measured.digest !== entry.digest) return 'damaged';
    if (measured.diffId !== entry.diffId || measured.uncompressedSize !== entry.uncompressedSize) {
      this.options.warn?.(`the layer cache's entry ${says}, but its tar is ${measured.uncompressedSize} bytes with diffID ${measured.diffId}; the layer was made again`);
      await this.#vouch(measured);
      return 'lies';
    }
    await this.#vouch(measured);
    return 'holds';
  }

  /** Files what a blob holds, known from the pass that wrote it or from measuring it. */
  async #vouch(entry: Measurement): Promise<void> {
    if (this.format.compression === 'none') return;
    const { digest, diffId, uncompressedSize } = entry;
    await this.store.writeEntry('verified', digestHex(digest), { digest, diffId, uncompressedSize });
  }

  /** The pieces of a layer made again after its cached bytes proved damaged: they must be the same layer. */
  #remade(again: Served, digest: string): BytePiece[] {
    if (again.layer.descriptor.digest !== digest) {
      throw new Error(`layer ${digest} was made again as ${again.layer.descriptor.digest}: its inputs changed during the build`);
    }
    return again.layer.pieces!;
  }

  #headPart(): Promise<{ tar: Buffer; stored: Buffer; frame: string }> {
    this.#head ??= storePathsEnds(this.format).then(({ head, end }) => ({
      ...head,
      frame: `sha256:${createHash('sha256').update(head.stored).update(end.stored).digest('hex')}`,
    }));
    return this.#head;
  }

  /** Writes a part in its blob file: head frame, the path's frames, end frame (a layer of its own). */
  async #writePart(source: LayerSource, key: string, storePath: string, diff: ReturnType<typeof createHash>, head: Buffer, onTarred?: () => void): Promise<PartEntry> {
    const temp = this.store.tempPath();
    const handle = await open(temp, 'wx', 0o644);
    let written;
    try {
      written = await writeLayer(source, this.format, { handle, at: 0, path: temp }, {
        whole: false,
        alsoHash: diff,
        around: { before: head, after: this.#end },
        onTarred,
        turns: this.options.turns,
      });
    } catch (err) {
      await handle.close();
      await this.store.discard(temp);
      throw err;
    }
    await handle.close();
    await this.store.adoptBlob(temp, written.digest);
    const entry: PartEntry = { blob: written.digest, offset: head.length, size: written.size, tarSize: written.tarSize, storePath };
    await this.store.writeEntry('parts', key, entry);
    return entry;
  }

  /** A layer whose bytes proved wrong: its damaged parts go, or, when they are all intact, its entry. */
  async #dropDamaged(layerKey: string, partKeys: string[], parts: (PartEntry | null)[]): Promise<void> {
    this.#linked.clear();
    const bad = await this.#damaged(parts);
    if (bad.length > 0) await this.#dropParts(partKeys, parts, bad);
    else await this.store.removeEntry('layers', layerKey);
  }

  async #dropParts(keys: string[], parts: (PartEntry | null)[], bad: number[]): Promise<void> {
    for (const i of bad) {
      const part = parts[i];
      await this.store.removeEntry('parts', keys[i]!, part?.blob);
      if (part) this.#linked.delete(part.blob);
      parts[i] = null;
    }
  }

  /**
   * The layer's pieces, with the parts' blob files linked into the work directory; null if one is gone.
   * A single part's blob file is the whole layer.
   */
  async #pieces(head: Buffer, parts: PartEntry[]): Promise<BytePiece[] | null> {
    const files = await Promise.all(parts.map((p) => this.#link(p.blob)));
    if (files.some((f) => f === null)) return null;
    if (parts.length === 1) return [{ file: files[0]!, start: 0, length: head.length + parts[0]!.size + this.#end.length }];
    return [{ bytes: head }, ...parts.map((p, i) => ({ file: files[i]!, start: p.offset, length: p.size })), { bytes: this.#end }];
  }

  /** A cached blob hard-linked (or, across file systems, copied) into the work directory; null if missing. */
  #link(digest: string): Promise<string | null> {
    let linked = this.#linked.get(digest);
    if (!linked) {
      // A new name each time: a blob dropped as damaged and rebuilt must not find its old link.
      const target = join(this.workDir, `cached-${++this.#links}-${digestHex(digest)}`);
      const source = this.store.blobPath(digest);
      linked = link(source, target).then(
        () => target,
        async (err: NodeJS.ErrnoException) => {
          if (err.code === 'ENOENT') return null;
          await copyFile(source, target);
          return target;
        },
      );
      this.#linked.set(digest, linked);
    }
    return linked;
  }

  /** True when the pieces hash to `digest` (on the hash pool); false when they do not or cannot be read. */
  async #intact(pieces: BytePiece[], digest: string): Promise<boolean> {
    try {
      return (await this.options.hashes.sha256(pieces)).digest === digest;
    } catch {
      return false;
    }
  }

  /** Indexes of parts whose blob file is missing, too short, or not the bytes its name says. */
  async #damaged(parts: (PartEntry | null)[]): Promise<number[]> {
    const bad = await Promise.all(
      parts.map(async (part) => {
        if (!part) return false;
        const file = this.store.blobPath(part.blob);
        const size = await sizeOf(file);
        if (size === null || size < part.offset + part.size) return true;
        return !(await this.#intact([{ file, start: 0, length: size }], part.blob));
      }),
    );
    return bad.flatMap((b, i) => (b ? [i] : []));
  }

  #layer(pieces: BytePiece[], entry: LayerEntry, contents: string[], repair?: () => Promise<BytePiece[]>): Layer {
    return layerOf({
      digest: entry.digest,
      size: entry.size,
      diffId: entry.diffId,
      uncompressedSize: entry.uncompressedSize,
      compression: this.format.compression,
      pieces,
      contents,
      ...(repair && { unverified: { repair } }),
    });
  }
}

async function sizeOf(file: string): Promise<number | null> {
  try {
    return (await stat(file)).size;
  } catch {
    return null;
  }
}

/** Every file piece's file still holds its range (a cheap check; the bytes are checked when read). */
async function fileSizesHold(pieces: BytePiece[]): Promise<boolean> {
  const sizes = await Promise.all(pieces.map((p) => ('bytes' in p ? Infinity : sizeOf(p.file))));
  return pieces.every((p, i) => 'bytes' in p || (sizes[i] ?? -1) >= p.start + p.length);
}
