import { createHash, randomBytes, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { once } from 'node:events';
import { join } from 'node:path';
import type { StorePathInfo } from '../nix/types.js';
import { storePathsSource } from '../layers/store-path-source.js';
import type { LayerBlob } from '../layers/types.js';
import { removeOnExit } from '../util/cleanup.js';
import { UserError } from '../util/errors.js';
import { composedLayerKey, storePathPartKey, type LayerSettings } from './keys.js';
import { CacheStore, digestHex, isDigest, isRecord, isSize } from './store.js';
import { END_OF_ARCHIVE, storedFormSync, tarSegment, tarSegmentBytes, writeSegment, type WrittenSegment } from './segment.js';

/**
 * A store path's cached part: its tar segment in stored form (the path is there for people reading
 * the cache). The member's bytes are a blob of their own, or — once the path made a layer alone —
 * lie at `offset` inside that layer's blob `blob`, which a rebuild then hard-links whole.
 */
type PartEntry = WrittenSegment & { storePath?: string; blob?: string; offset?: number };
/** A layer composed of parts; its diffID cannot be derived from the parts' hashes, so it is kept. */
interface LayerEntry {
  digest: string;
  size: number;
  diffId: string;
  uncompressedSize: number;
}
interface ComposedEntry extends LayerEntry {
  /** sha256 of each part the digest was computed over, and of the head and end members together. */
  parts: string[];
  frame: string;
}
interface WheelEntry extends LayerEntry {
  /** Whatever the wheel stage needs from the pass that wrote the layer (the ELF facts). */
  facts: unknown;
}

const isPartEntry = (v: unknown): v is PartEntry =>
  isRecord(v) && isDigest(v.digest) && isSize(v.size) && isSize(v.tarSize) && (v.blob === undefined || (isDigest(v.blob) && isSize(v.offset)));
/** The blob file a part's bytes are in. */
const blobOf = (part: PartEntry) => part.blob ?? part.digest;
const isLayerEntry = (v: unknown): v is LayerEntry =>
  isRecord(v) && isDigest(v.digest) && isSize(v.size) && isDigest(v.diffId) && isSize(v.uncompressedSize);
const isWheelEntry = (v: unknown): v is WheelEntry => isLayerEntry(v) && 'facts' in v;
const isComposedEntry = (v: unknown): v is ComposedEntry =>
  isLayerEntry(v) && Array.isArray((v as ComposedEntry).parts) && (v as ComposedEntry).parts.every(isDigest) && isDigest((v as ComposedEntry).frame);

export interface CachedLayer {
  blob: LayerBlob;
  /** True when nothing was tarred into a compressor: every byte came from the cache. */
  reused: boolean;
}

/**
 * Builds layers through the cache. A store-path layer is composed of parts, one per store path:
 *
 *   [member: `nix/`, `nix/store/` headers] [members: path 1's entries] … [member: the end-of-archive blocks]
 *
 * Each part is a store path's tar segment compressed as gzip members of its own, cached by the path's NAR
 * hash and the settings. A layer of one path is the same blob however the cache was filled, and
 * regrouping paths under --max-layers recompresses nothing. The uncompressed tar is exactly what
 * `storePathsSource` writes, so diffIDs do not depend on the cache either.
 *
 * The layer's diffID is the sha256 of the concatenated tar segments. sha256 cannot be resumed from the
 * parts' hashes (Node exposes no midstate), so for a grouping not seen before the parts are re-tarred
 * from the export into one hash — reading NARs and encoding tar runs near disk speed; compression is the
 * expensive step, and it is skipped. The result is cached per grouping, so an unchanged layer costs
 * one read of its compressed bytes, which is also the check that they are intact.
 */
export class LayerCache {
  #head: Promise<{ tar: Buffer; stored: Buffer; frame: string }> | null = null;
  #end: Buffer;

  constructor(
    readonly store: CacheStore,
    readonly settings: LayerSettings,
    /** Where the layers' blob files go (the build's work directory). */
    readonly workDir: string,
  ) {
    this.#end = storedFormSync(END_OF_ARCHIVE, settings);
  }

  async storePathLayer(infos: StorePathInfo[]): Promise<CachedLayer> {
    storePathsSource(infos); // checks the paths, as a cold write would
    const sorted = [...infos].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
    const partKeys = sorted.map((info) => storePathPartKey(info, this.settings));
    const layerKey = composedLayerKey(partKeys, this.settings);
    const head = await this.#headPart();

    // A damaged part found while composing is removed and the layer tried again, which rebuilds it.
    for (let attempt = 0; attempt < 3; attempt++) {
      const known = await this.store.readEntry('layers', layerKey, isComposedEntry);
      const parts = await Promise.all(partKeys.map((key) => this.store.readEntry('parts', key, isPartEntry)));
      if (known && parts.every((p): p is PartEntry => p !== null)) {
        // The same verified parts in the same frame are the same bytes: the layer's digest is the known one.
        const same = known.frame === head.frame && known.parts.length === parts.length && parts.every((p, i) => p.digest === known.parts[i]);
        if (same && parts.length === 1 && parts[0]!.blob === known.digest) {
          const linked = await this.#checkOut(known);
          if (linked) {
            await Promise.all([this.store.touch('layers', layerKey), this.store.touch('parts', partKeys[0]!)]);
            return { blob: this.#blob(linked, known), reused: true };
          }
          await this.#dropParts(partKeys, parts, [0]);
          await this.store.removeEntry('layers', layerKey);
          continue;
        }
        const composed = await this.#compose(head.stored, parts, same ? known.digest : null);
        if (composed.ok && composed.digest === known.digest && composed.size === known.size) {
          await Promise.all([this.store.touch('layers', layerKey), ...partKeys.map((key) => this.store.touch('parts', key))]);
          return { blob: this.#blob(composed.file, known), reused: true };
        }
        if (composed.ok) await rm(composed.file, { force: true });
        await this.#dropParts(partKeys, parts, composed.ok ? [] : composed.bad);
        if (composed.ok) await this.store.removeEntry('layers', layerKey);
        continue;
      }

      const diff = createHash('sha256').update(head.tar);
      let built = 0;
      const stale: number[] = [];
      for (const [i, info] of sorted.entries()) {
        const source = storePathsSource([info], { storeDirEntries: false });
        const cached = parts[i];
        if (cached) {
          const tarSize = await tarSegment(source, this.settings.mtime, (bytes, release) => {
            diff.update(bytes);
            release();
          });
          if (tarSize !== cached.tarSize) stale.push(i);
          continue;
        }
        parts[i] = await this.#writePart(source, partKeys[i]!, info.path, diff);
        built++;
      }
      if (stale.length > 0) {
        await this.#dropParts(partKeys, parts, stale);
        continue;
      }
      diff.update(END_OF_ARCHIVE);
      const composed = await this.#compose(head.stored, parts as PartEntry[], null);
      if (!composed.ok) {
        await this.#dropParts(partKeys, parts, composed.bad);
        continue;
      }
      const entry: ComposedEntry = {
        parts: (parts as PartEntry[]).map((p) => p.digest),
        frame: head.frame,
        digest: composed.digest,
        size: composed.size,
        diffId: `sha256:${diff.digest('hex')}`,
        uncompressedSize: head.tar.length + (parts as PartEntry[]).reduce((n, p) => n + p.tarSize, 0) + END_OF_ARCHIVE.length,
      };
      await this.store.writeEntry('layers', layerKey, entry);
      if (parts.length === 1) await this.#keepWhole(partKeys[0]!, parts[0]!, composed.file, composed.digest, head.stored.length);
      return { blob: this.#blob(composed.file, entry), reused: built === 0 };
    }
    throw new UserError(`cache ${this.store.dir}: store path parts keep failing their checks; remove the cache directory or use --no-cache`);
  }

  /**
   * A whole layer cached under `key` (a wheel's), with `facts` the build keeps beside it. On a miss
   * `build` writes the layer into the work directory and its blob is added to the cache.
   */
  async wholeLayer<F>(key: string, build: () => Promise<{ blob: LayerBlob; facts: F }>): Promise<CachedLayer & { facts: F }> {
    const known = await this.store.readEntry('wheels', key, isWheelEntry);
    if (known) {
      const file = await this.#checkOut(known);
      if (file) {
        await this.store.touch('wheels', key);
        return { blob: this.#blob(file, known), reused: true, facts: known.facts as F };
      }
      await this.store.removeEntry('wheels', key, known.digest);
    }
    const { blob, facts } = await build();
    if (blob.compression !== this.settings.compression) throw new Error('wheel layer written with other settings than the cache’s');
    await this.store.storeBlobCopy(blob.file, blob.digest);
    const entry: WheelEntry = { digest: blob.digest, size: blob.size, diffId: blob.diffId, uncompressedSize: blob.uncompressedSize, facts };
    await this.store.writeEntry('wheels', key, entry);
    return { blob, reused: false, facts };
  }

  #headPart(): Promise<{ tar: Buffer; stored: Buffer; frame: string }> {
    this.#head ??= tarSegmentBytes(storePathsSource([]), this.settings.mtime).then((tar) => {
      const stored = storedFormSync(tar, this.settings);
      return { tar, stored, frame: `sha256:${createHash('sha256').update(stored).update(this.#end).digest('hex')}` };
    });
    return this.#head;
  }

  async #writePart(source: Parameters<typeof writeSegment>[0], key: string, storePath: string, diff: Hash): Promise<PartEntry> {
    const temp = this.store.tempPath();
    const written = await writeSegment(source, this.settings, temp, diff);
    await this.store.adoptBlob(temp, written.digest);
    const entry: PartEntry = { ...written, storePath };
    await this.store.writeEntry('parts', key, entry);
    return entry;
  }

  async #dropParts(keys: string[], parts: (PartEntry | null)[], bad: number[]): Promise<void> {
    for (const i of bad) {
      const part = parts[i];
      await this.store.removeEntry('parts', keys[i]!, part ? blobOf(part) : undefined);
      parts[i] = null;
    }
  }

  /**
   * A path's layer of its own is kept whole, its part pointing inside it, and the part's own blob goes:
   * an unchanged layer is then a hard link and one hash pass, and the bytes are in the cache once.
   */
  async #keepWhole(key: string, part: PartEntry, file: string, digest: string, offset: number): Promise<void> {
    if (part.blob === digest) return;
    await this.store.storeBlobCopy(file, digest);
    const { blob: _, offset: __, ...own } = part;
    await this.store.writeEntry('parts', key, { ...own, blob: digest, offset });
    if (!part.blob) await rm(this.store.blobPath(part.digest), { force: true });
  }

  /** A cached whole layer, hard-linked (or copied) into the work directory and checked; null if damaged. */
  async #checkOut(entry: LayerEntry): Promise<string | null> {
    const temp = this.#tempFile();
    const forget = removeOnExit(temp);
    try {
      if (!(await this.store.checkOutBlob(entry.digest, entry.size, temp))) return null;
      const file = join(this.workDir, digestHex(entry.digest));
      await rename(temp, file);
      return file;
    } finally {
      forget();
    }
  }

  /**
   * Concatenates head, parts and end into a blob file in the work directory, checking each part's size
   * and sha256 on the way. Returns the indexes of damaged or missing parts instead when there are any.
   * With `digest` given (known from verified parts), the whole is not hashed a second time.
   */
  async #compose(
    head: Buffer,
    parts: PartEntry[],
    digest: string | null,
  ): Promise<{ ok: true; file: string; digest: string; size: number } | { ok: false; bad: number[] }> {
    const temp = this.#tempFile();
    const forget = removeOnExit(temp);
    const out = createWriteStream(temp, { flags: 'wx', mode: 0o644, highWaterMark: 1 << 20 });
    let failure: Error | null = null;
    out.on('error', (err) => (failure ??= err));
    const whole = createHash('sha256');
    let size = 0;
    const write = async (bytes: Buffer) => {
      if (!digest) whole.update(bytes);
      size += bytes.length;
      if (!out.write(bytes) && !failure) await once(out, 'drain');
    };
    const bad: number[] = [];
    try {
      await write(head);
      for (const [i, part] of parts.entries()) {
        const own = createHash('sha256');
        let seen = 0;
        try {
          const start = part.offset ?? 0;
          const from = createReadStream(this.store.blobPath(blobOf(part)), { start, end: start + part.size - 1, highWaterMark: 1 << 20 });
          for await (const chunk of from) {
            own.update(chunk as Buffer);
            seen += (chunk as Buffer).length;
            if (seen > part.size) break;
            if (bad.length === 0) await write(chunk as Buffer);
          }
        } catch {
          bad.push(i);
          continue;
        }
        if (seen !== part.size || `sha256:${own.digest('hex')}` !== part.digest) bad.push(i);
      }
      await write(this.#end);
      await new Promise<void>((resolve) => out.end(resolve));
      if (failure) throw new UserError(`cannot write layer in ${this.workDir}: ${(failure as NodeJS.ErrnoException).code ?? String(failure)}`);
      if (bad.length > 0) {
        await rm(temp, { force: true });
        return { ok: false, bad };
      }
      const final = digest ?? `sha256:${whole.digest('hex')}`;
      const file = join(this.workDir, digestHex(final));
      await rename(temp, file);
      return { ok: true, file, digest: final, size };
    } catch (err) {
      if (!out.closed) out.destroy();
      await rm(temp, { force: true });
      throw err;
    } finally {
      forget();
    }
  }

  #tempFile(): string {
    return join(this.workDir, `.compose-${process.pid}-${randomBytes(6).toString('hex')}.tmp`);
  }

  #blob(file: string, entry: LayerEntry): LayerBlob {
    return { file, digest: entry.digest, size: entry.size, diffId: entry.diffId, uncompressedSize: entry.uncompressedSize, compression: this.settings.compression };
  }
}
