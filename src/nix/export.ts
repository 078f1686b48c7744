/**
 * Indexing a `nix-store --export` stream. Layout, all integers u64 LE, strings as in NARs:
 *   { 1 <NAR> 0x4558494e("NIXE") <store path> <count> <reference>… <deriver or ""> 0 } 0
 * A path's name follows its NAR, so the NAR is parsed (and hashed) before we know whose it is; afterwards
 * only its offset is kept and the bytes are read again from the file when needed.
 */
import type { Readable } from 'node:stream';
import { spoolExport } from './spool.js';
import type { NarNode, NarVisitor, StorePathInfo } from './types.js';
import { UserError } from '../util/errors.js';
import { ChunkReader, EndOfDataError, ReadFailedError, closeFd, openForReading, sizeOfFd } from './chunk-reader.js';
import { parseNar, narMessage, type NarProblem } from './nar.js';
import { storePathProblem } from './store-path.js';
import { quote } from '../util/quote.js';
import { defaultHashPool, HashReadError, type HashPool, type HashResult } from '../util/hash-pool.js';

const EXPORT_MAGIC = 0x4558494en; // "NIXE" in little-endian bytes
/** Store paths are at most 255 chars; read a little more so a bad one is shown, not just its length. */
const MAX_STORE_PATH_STRING = 1024;
/** Indexing is one sequential pass: big reads mean fewer syscalls and wake-ups (two buffers: 8 MiB). */
const INDEX_CHUNK = 4 << 20;
/** Old Nix exports may carry a signature after a 1 flag; Nix ignores it, and so do we. */
const MAX_LEGACY_SIGNATURE = 4096;

export interface IndexOptions {
  /** The file's name in messages (e.g. `stdin` for a spooled stream); defaults to `file`. */
  label?: string;
  /** Read size; default 4 MiB. */
  chunkSize?: number;
  /** Called after each read with the bytes read so far and the file's size. */
  onProgress?: (bytesRead: number, totalBytes: number) => void;
  /**
   * Hashes each NAR (its `narHash`; default: a pool of one thread per CPU); null leaves `narHash` empty, for a build that nothing checks or
   * keys by it (no cache, no path-info, one export): reading an export is then parsing alone.
   */
  hashes?: HashPool | null;
  /**
   * The nodes of each NAR that `keep` takes, handed to `found` with the path's name as the pass reads
   * them: a caller that needs a listing of every path (the wheel checks' closure index) then does not
   * read each NAR again.
   */
  listing?: NarListing;
  /** Called once every NAR is parsed, while the hash pool may still be hashing: the thread is free for other work. */
  onParsed?: () => void;
}

/** Which nodes of each NAR to keep while indexing, and who gets them (once per path, in file order). */
export interface NarListing {
  keep(node: NarNode): boolean;
  found(path: string, nodes: NarNode[]): void;
}

/**
 * One streaming pass over an export: parses and validates every NAR, records where it lies, and reads each
 * path's trailer; each NAR is hashed (sha256) on the hash pool's threads as soon as its end is known, so
 * hashing, the costly part, uses every core while parsing skips over file contents. Memory stays flat
 * whatever the sizes. Paths are returned in file order; a path may appear more than once (the caller merges).
 */
export async function indexExport(file: string, opts: IndexOptions = {}): Promise<StorePathInfo[]> {
  const label = opts.label ?? file;
  let fd: number;
  try {
    fd = await openForReading(file);
  } catch (err) {
    throw new UserError(`${label}: cannot open: ${describeErrno(err)}`);
  }
  try {
    const size = await sizeOfFd(fd);
    if (size === 0) throw new UserError(`${label} is empty: not a nix-store --export stream`);
    let hashed = 0;
    const onProgress = opts.onProgress;
    const reader = new ChunkReader(fd, 0, size, { chunkSize: opts.chunkSize ?? INDEX_CHUNK });
    const indexer = new ExportIndexer(reader, file, label, opts.hashes === undefined ? defaultHashPool() : opts.hashes, onProgress && ((n) => onProgress((hashed += n), size)), opts);
    try {
      const infos = await indexer.run();
      // Only NAR bytes are counted as they are hashed; the trailers between them complete the file.
      onProgress?.(size, size);
      return infos;
    } finally {
      await reader.close();
    }
  } finally {
    await closeFd(fd);
  }
}

class ExportIndexer {
  /** What the current position belongs to, for messages. */
  #where = '';

  /** Each NAR's hash, being computed off this thread, by its index in the result. */
  readonly #hashes: Promise<HashResult>[] = [];

  constructor(
    readonly r: ChunkReader,
    readonly file: string,
    readonly label: string,
    readonly hashes: HashPool | null,
    readonly onHashed?: (bytes: number) => void,
    readonly opts: Pick<IndexOptions, 'listing' | 'onParsed'> = {},
  ) {}

  fail(offset: number, message: string): UserError {
    return new UserError(`${this.label}: byte ${offset}: ${this.#where ? `${this.#where}: ` : ''}${message}`);
  }

  async run(): Promise<StorePathInfo[]> {
    try {
      const infos = await this.#paths();
      this.opts.onParsed?.();
      const hashes = await Promise.all(this.#hashes);
      for (const [i, info] of infos.entries()) info.narHash = hashes[i]!.digest.slice('sha256:'.length);
      return infos;
    } catch (err) {
      // Hashes still running for a failed index are of no interest, and must not go unhandled.
      for (const pending of this.#hashes) pending.catch(() => {});
      if (err instanceof HashReadError) {
        throw new UserError(`${this.label}: changed while being read: ${err.code === 'SHORT' ? `it now ends at byte ${err.at}` : `read failed at byte ${err.at}: ${err.code}`}`);
      }
      if (err instanceof EndOfDataError) {
        throw new UserError(`${this.label}: ${this.#where ? `${this.#where}: ` : ''}unexpected end of file at byte ${err.at}`);
      }
      if (err instanceof ReadFailedError) throw new UserError(`${this.label}: ${err.message}`, { cause: err });
      throw err;
    }
  }

  async #paths(): Promise<StorePathInfo[]> {
    const r = this.r;
    const infos: StorePathInfo[] = [];
    let previous: string | null = null;
    for (let index = 1; ; index++) {
      this.#where = previous === null ? '' : `after ${previous}`;
      const flagAt = r.position;
      const flag = await this.#flag();
      if (flag === 0n) break;
      if (flag !== 1n) {
        if (index === 1) throw this.fail(flagAt, `not a nix-store --export stream (it starts with ${hex(flag)}, not 1)`);
        throw this.fail(flagAt, `expected 1 (another path) or 0 (end of export), got ${hex(flag)}`);
      }

      const pending = `path #${index} (store path not yet read)`;
      this.#where = pending;
      const offset = r.position;
      let problem: NarProblem | null = null;
      const nodes: NarNode[] = [];
      // Indexing only validates, skipping over file contents (the hash pool reads them); a listing only notes nodes.
      await parseNar(r, this.opts.listing ? keeper(this.opts.listing, nodes) : null, {
        file: this.label,
        label: pending,
        onNameProblem: (p) => {
          problem ??= p;
        },
      });
      const narSize = r.position - offset;
      if (this.hashes) {
        this.#hashes.push(this.hashes.sha256([{ file: this.file, start: offset, length: narSize }], this.onHashed));
      } else {
        this.#hashes.push(Promise.resolve({ digest: 'sha256:' }));
        this.onHashed?.(narSize);
      }

      const magicAt = r.position;
      const magic = await this.#flag();
      if (magic !== EXPORT_MAGIC) {
        throw this.fail(magicAt, `wrong export magic ${hex(magic)} after the NAR (expected ${hex(EXPORT_MAGIC)}, "NIXE")`);
      }
      const path = await this.#storePath('store path');
      this.#where = path;
      // A bad name inside the NAR is only reported now, when the path it belongs to is known.
      if (problem) throw new UserError(narMessage(this.label, path, problem));
      this.opts.listing?.found(path, nodes);

      const countAt = r.position;
      const count = await this.#u64();
      // Each reference takes at least 8 bytes, so a larger count cannot be right; don't loop on it.
      if (count > (r.limit - r.position) / 8) throw this.fail(countAt, `reference count ${count} is larger than the rest of the file`);
      const references = new Set<string>();
      for (let i = 0; i < count; i++) references.add(await this.#storePath('reference'));
      const deriverAt = r.position;
      const deriverText = await this.#string(MAX_STORE_PATH_STRING, 'deriver');
      let deriver: string | null = null;
      if (deriverText !== '') {
        const why = storePathProblem(deriverText);
        if (why) throw this.fail(deriverAt, `deriver ${quote(deriverText)} is not a valid store path: ${why}`);
        deriver = deriverText;
      }
      const signatureAt = r.position;
      const signatureFlag = await this.#flag();
      if (signatureFlag === 1n) await this.#string(MAX_LEGACY_SIGNATURE, 'legacy signature');
      else if (signatureFlag !== 0n) throw this.fail(signatureAt, `expected the signature flag 0 or 1, got ${hex(signatureFlag)}`);

      infos.push({
        path,
        references: [...references].sort(),
        deriver,
        narHash: '', // filled in once the hash pool is done
        narSize,
        source: { file: this.file, offset },
      });
      previous = path;
    }
    if (!r.atLimit) {
      this.#where = '';
      throw this.fail(
        r.position,
        `data after the end of the export (the final 0 at byte ${r.position - 8}); concatenated exports must be given as separate files`,
      );
    }
    return infos;
  }

  async #u64(): Promise<number> {
    const r = this.r;
    const at = r.position;
    const p = r.need(8);
    if (p) await p;
    const lo = r.buf.readUInt32LE(r.pos);
    const hi = r.buf.readUInt32LE(r.pos + 4);
    if (hi >= 1 << 21) throw this.fail(at, `number ${BigInt(hi) * 2n ** 32n + BigInt(lo)} is too large`);
    r.pos += 8;
    return hi * 2 ** 32 + lo;
  }

  /** A u64 that is compared, not counted (a flag or magic): any value is allowed, so a message can show it. */
  async #flag(): Promise<bigint> {
    const r = this.r;
    const p = r.need(8);
    if (p) await p;
    const value = r.buf.readBigUInt64LE(r.pos);
    r.pos += 8;
    return value;
  }

  async #string(max: number, what: string): Promise<string> {
    const r = this.r;
    const at = r.position;
    const length = await this.#u64();
    if (length > max) throw this.fail(at, `${what} of ${length} bytes is longer than the ${max} allowed`);
    const total = (length + 7) & ~7;
    const p = r.need(total);
    if (p) await p;
    const text = r.buf.toString('latin1', r.pos, r.pos + length);
    for (let i = length; i < total; i++) {
      if (r.buf[r.pos + i] !== 0) throw this.fail(at + 8 + length, `non-zero padding after the ${what}`);
    }
    r.pos += total;
    return text;
  }

  async #storePath(what: string): Promise<string> {
    const at = this.r.position;
    const text = await this.#string(MAX_STORE_PATH_STRING, what);
    const why = storePathProblem(text);
    if (why) throw this.fail(at, `${what} ${quote(text)} is not a valid store path: ${why}`);
    return text;
  }
}

/** A visitor that notes the nodes `listing` keeps and leaves every file's contents unread. */
function keeper(listing: NarListing, nodes: NarNode[]): NarVisitor {
  const note = (node: NarNode) => {
    if (listing.keep(node)) nodes.push(node);
  };
  return { directory: note, regular: note, symlink: note };
}

function hex(n: number | bigint): string {
  return `0x${n.toString(16)}`;
}

function describeErrno(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e.code === 'ENOENT' ? 'no such file' : e.code === 'EISDIR' ? 'is a directory' : (e.code ?? String(err));
}

/**
 * Copies a stream (stdin, a pipe) to a new file in `dir`, so it can be indexed and read again by offset,
 * checking its framing and its size as it goes (see spool.ts). Written to a temporary name and renamed
 * when complete; the caller deletes the file (or `dir`). `label` names the stream in messages.
 */
export async function spoolToFile(stream: Readable, dir: string, label = 'stdin', limit?: number): Promise<string> {
  return spoolExport(stream, dir, { label, ...(limit !== undefined && { limit }) });
}
