import { createHash, randomBytes } from 'node:crypto';
import { lstat, mkdir, mkdtemp, readdir, readFile, rename, rm, utimes, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { removeOnExit } from '../util/cleanup.js';
import { abandoned, OWNER_TAG } from '../util/atomic.js';
import { UserError } from '../util/errors.js';
import { settleInOrder } from '../util/settle.js';
import { CACHE_FORMAT_VERSION } from '../layer/format.js';
import { digestHex } from '../model/manifest.js';

/**
 * The on-disk cache: content-addressed blobs and small JSON entries naming them, under a folder of the
 * format version (`v3/`), so a new format starts afresh beside an old one.
 *
 *   <dir>/v3/blobs/<sha256 hex>     a blob: a store path's part (a whole one-path layer), or a wheel's layer
 *   <dir>/v3/parts/<key>.json       a store path's part:  { blob, offset, size, tarSize, storePath }
 *   <dir>/v3/layers/<key>.json      a composed layer:     { digest, size, diffId, uncompressedSize, parts, frame }
 *   <dir>/v3/wheels/<key>.json      a wheel's layer:      { digest, size, diffId, uncompressedSize, facts }
 *   <dir>/v3/inputs/<key>.json      what was read from an unchanged input file (an export's index, a wheel's facts)
 *   <dir>/v3/listings/<key>.json    a store path's file listing for the wheel checks
 *   <dir>/v3/verified/<hex>.json    a layer blob measured: { digest, diffId, uncompressedSize }, by digest
 *   (each entry file is { sum, value }: sum is the sha256 of the value's JSON)
 *   <dir>/v3/tmp/<pid>-<host>-….tmp files being written (renamed into place when complete)
 *   <dir>/v3/builds/<pid>-<host>-…/ a running build's work directory (cached blobs hard-linked in)
 *
 * Every file appears by rename, so readers see none or all of it; two builds writing the same entry
 * write the same bytes. Readers never trust a blob: they check its size and sha256 while using it.
 * An entry's mtime is its last use (touched on every hit), which `prune` evicts by.
 */
/**
 * Entries without blobs: `inputs`, what was read from unchanged input files; `listings`, store paths'
 * file listings; `verified`, what a layer blob was measured to hold (its tar's diffID and size).
 */
export type EntryKind = 'parts' | 'layers' | 'wheels' | 'inputs' | 'listings' | 'verified';
export const ENTRY_KINDS: EntryKind[] = ['parts', 'layers', 'wheels', 'inputs', 'listings', 'verified'];

export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_CACHE_HOME;
  // The XDG spec says a relative XDG_CACHE_HOME is invalid and to be ignored.
  if (xdg && xdg.startsWith('/')) return join(xdg, 'nix2oci');
  return join(homedir(), '.cache', 'nix2oci');
}

export class CacheStore {
  readonly root: string;
  /** Entry writes put off until `flush` (see writeLater). */
  readonly #later: (() => Promise<void>)[] = [];

  private constructor(readonly dir: string) {
    this.root = join(dir, `v${CACHE_FORMAT_VERSION}`);
  }

  /** Opens (creating) the cache in `dir`. */
  static async open(dir: string): Promise<CacheStore> {
    const store = new CacheStore(dir);
    try {
      for (const sub of ['blobs', 'tmp', 'builds', ...ENTRY_KINDS]) await mkdir(join(store.root, sub), { recursive: true });
    } catch (err) {
      throw new UserError(`cannot use cache directory ${dir}: ${(err as NodeJS.ErrnoException).code ?? String(err)} (pick another with --cache-dir, or --no-cache)`);
    }
    return store;
  }

  blobPath(digest: string): string {
    return join(this.root, 'blobs', digestHex(digest));
  }

  entryPath(kind: EntryKind, key: string): string {
    return join(this.root, kind, `${key}.json`);
  }

  /**
   * A new work directory for one build, `builds/<pid>-<host>-<random>`: on the blobs' file system, so
   * they can be hard-linked in and out. The build removes it; the next build or `prune` removes one
   * whose process is gone (see {@link sweep}).
   */
  async makeBuildDir(): Promise<string> {
    try {
      return await mkdtemp(join(this.root, 'builds', `${OWNER_TAG}-`));
    } catch (err) {
      throw new UserError(`cannot use cache directory ${this.dir}: ${(err as NodeJS.ErrnoException).code ?? String(err)} (pick another with --cache-dir, or --no-cache)`);
    }
  }

  /** Where files being written wait (same file system as the blobs, so rename works). */
  get tempDir(): string {
    return join(this.root, 'tmp');
  }

  /** A fresh temp file name in the cache (same file system as the blobs, so rename works). */
  tempPath(): string {
    return join(this.root, 'tmp', `${OWNER_TAG}-${randomBytes(8).toString('hex')}.tmp`);
  }

  /**
   * Removes what killed builds left (SIGKILL, a lost machine): temp files and work directories whose
   * process is gone, or an hour old and not traceable to a running process of this host. Each build
   * does it as it opens the cache, and `prune` too. Returns how many went. Never fails: housekeeping.
   */
  async sweep(now = Date.now()): Promise<number> {
    let removed = 0;
    for (const sub of ['tmp', 'builds']) {
      const dir = join(this.root, sub);
      for (const name of await readdir(dir).catch(() => [] as string[])) {
        const info = await lstat(join(dir, name)).catch(() => null);
        if (!info || !abandoned(name, info.mtimeMs, now)) continue;
        await rm(join(dir, name), { recursive: true, force: true }).then(() => removed++, () => undefined);
      }
    }
    return removed;
  }

  /** An entry's value, or null when absent, unreadable or failing its checksum (a miss: it is rewritten). */
  async readEntry<T>(kind: EntryKind, key: string, valid: (value: unknown) => value is T): Promise<T | null> {
    const path = this.entryPath(kind, key);
    let value: unknown;
    try {
      value = entryValue(await readFile(path, 'utf8'));
    } catch {
      return null;
    }
    if (value === null || !valid(value)) {
      await rm(path, { force: true });
      return null;
    }
    return value;
  }

  async writeEntry(kind: EntryKind, key: string, value: unknown): Promise<void> {
    const temp = this.tempPath();
    const forget = removeOnExit(temp);
    try {
      await writeFile(temp, entryText(value), { flag: 'wx' });
      await rename(temp, this.entryPath(kind, key));
    } finally {
      forget();
      await rm(temp, { force: true });
    }
  }

  /**
   * Writes an entry that only later builds read (what was read from an input file) at `flush`, not now:
   * serializing an export's index with its listings is 80 ms of the build's one thread, just when that
   * thread is the one handing the hashing threads their work. The build flushes while it waits for the
   * registry or the disk, and before it ends.
   */
  writeLater(kind: EntryKind, key: string, value: unknown): void {
    this.#later.push(() => this.writeEntry(kind, key, value));
  }

  /** Writes what writeLater put off; throws the first failure once every write has ended. */
  async flush(): Promise<void> {
    while (this.#later.length > 0) await settleInOrder(this.#later.splice(0).map((write) => write()));
  }

  /** Marks an entry as just used, for least-recently-used pruning. Best effort. */
  async touch(kind: EntryKind, key: string): Promise<void> {
    const now = new Date();
    await utimes(this.entryPath(kind, key), now, now).catch(() => undefined);
  }

  async removeEntry(kind: EntryKind, key: string, digest?: string): Promise<void> {
    await rm(this.entryPath(kind, key), { force: true });
    if (digest) await rm(this.blobPath(digest), { force: true });
  }

  /** Moves a finished temp file (whose sha256 is `digest`) into the blob store. */
  async adoptBlob(temp: string, digest: string): Promise<void> {
    await rename(temp, this.blobPath(digest));
  }

  /** Removes a temp file that will not be adopted. */
  async discard(temp: string): Promise<void> {
    await rm(temp, { force: true });
  }
}

/**
 * An entry's file: `{"sum":"<sha256 of the value's JSON>","value":<the value's JSON>}` and a newline, as
 * JSON.stringify({ sum, value }) writes it, with the value serialized once (a wheel's facts run to
 * megabytes). Entries carry a sha256 of their value: a layer's digest is taken from its entry once its
 * parts check out, so an entry must not be trusted on its shape alone.
 */
function entryText(value: unknown): string {
  const json = JSON.stringify(value);
  return `${ENTRY_HEAD}${sha256Hex(json)}${ENTRY_MIDDLE}${json}}\n`;
}
const ENTRY_HEAD = '{"sum":"';
const ENTRY_MIDDLE = '","value":';
const SUM_HEX = 64;

/**
 * The value of an entry's file, or null when its checksum fails. A file in the shape entryText writes is
 * checked on its own bytes, then parsed once; any other JSON is parsed and its value serialized again.
 */
export function entryValue(text: string): unknown {
  const start = ENTRY_HEAD.length + SUM_HEX + ENTRY_MIDDLE.length;
  const end = text.endsWith('}\n') ? text.length - 2 : -1;
  if (end > start && text.startsWith(ENTRY_HEAD) && text.startsWith(ENTRY_MIDDLE, ENTRY_HEAD.length + SUM_HEX)) {
    const json = text.slice(start, end);
    return sha256Hex(json) === text.slice(ENTRY_HEAD.length, ENTRY_HEAD.length + SUM_HEX) ? JSON.parse(json) : null;
  }
  return unwrapEntry(JSON.parse(text));
}

/** The value of a stored entry (parsed), or null when its checksum fails. */
function unwrapEntry(stored: unknown): unknown {
  if (!isRecord(stored) || typeof stored.sum !== 'string') return null;
  return sha256Hex(JSON.stringify(stored.value)) === stored.sum ? stored.value : null;
}

function sha256Hex(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

export { digestHex };

export const isDigest = (v: unknown): v is string => typeof v === 'string' && /^sha256:[0-9a-f]{64}$/.test(v);
export const isSize = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
export const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
