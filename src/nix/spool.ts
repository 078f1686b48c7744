/**
 * Spooling a stream (stdin, a pipe, a device) to a file so it can be indexed and read again by offset,
 * checking as it goes that it is a `nix-store --export` stream and that it fits.
 *
 * The stream is parsed while it is copied, just far enough to know its framing (the export's records,
 * each NAR's tokens and file sizes; the indexer validates everything once the file is whole): anything
 * that is not an export (`/dev/zero`, `/dev/urandom`, text) fails within its first bytes, and the copy
 * stops at the export's end, where data after it fails too. Its size is limited (by default the free
 * space of the spool directory's file system less a reserve, so spooling never fills a disk); a file
 * the stream declares bigger than what is left fails as soon as its size is read.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { rename, statfs, unlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { UserError } from '../util/errors.js';
import { formatBytes, parseByteSize } from '../util/units.js';
import { describeOsError } from '../util/os-errors.js';

/** Sets the spool limit (bytes, or a size such as 20G) instead of the free space of the spool directory. */
export const SPOOL_LIMIT_ENV = 'NIX2OCI_SPOOL_LIMIT';
/** Left free on the spool directory's file system: 5 % of it, at most 1 GiB. */
const RESERVE_SHARE = 0.05;
const MAX_RESERVE = 1 << 30;

const EXPORT_MAGIC = 0x4558494en;
/** Longer than any token, name, target, store path or signature the indexer accepts. */
const MAX_STRING = 8192;
/** Deeper than any directory a file system holds (PATH_MAX / 2): a stream nesting further is not an export. */
const MAX_DEPTH = 2048;

export interface SpoolOptions {
  /** The stream's name in messages (`stdin`, a file). */
  label: string;
  /** Bytes the spooled file may take; default: from $NIX2OCI_SPOOL_LIMIT, else the free space less a reserve. */
  limit?: number;
}

/** Copies `stream` to a new file in `dir` (its path is returned), validating its framing on the way. */
export async function spoolExport(stream: Readable, dir: string, options: SpoolOptions): Promise<string> {
  const { label } = options;
  const limit = options.limit ?? (await spoolLimit(dir));
  const why = options.limit !== undefined ? 'the limit given' : process.env[SPOOL_LIMIT_ENV] ? `$${SPOOL_LIMIT_ENV}` : 'the free space there, less a reserve';
  const name = `stdin-${randomBytes(6).toString('hex')}.closure`;
  const final = join(dir, name);
  const temp = join(dir, `.${name}.partial`);
  let out: WriteStream | undefined;
  try {
    out = createWriteStream(temp, { flags: 'wx', highWaterMark: 1 << 20 });
    const file = out;
    let failure: NodeJS.ErrnoException | undefined;
    file.on('error', (err) => (failure ??= err));
    await new Promise<void>((ready) => {
      file.once('ready', ready);
      file.once('close', ready);
    });
    if (failure) throw failure;
    const reader = new SpoolReader(stream, label, limit, why, dir, async (chunk) => {
      if (failure) throw failure;
      if (!file.write(chunk)) await new Promise<void>((drained) => {
        file.once('drain', drained);
        file.once('close', drained);
      });
      if (failure) throw failure;
    });
    await new ExportFraming(reader).run();
    await new Promise<void>((closed) => {
      file.once('close', closed);
      file.end();
    });
    if (failure) throw failure;
    await rename(temp, final);
    return final;
  } catch (err) {
    if (out && !out.closed) await new Promise<void>((closed) => {
      out!.once('close', closed);
      out!.destroy();
    });
    stream.destroy();
    await unlink(temp).catch(() => {});
    if (err instanceof UserError) throw err;
    throw new UserError(`${label}: cannot copy the export to ${dir}: ${describeOsError(err)}`, { cause: err });
  }
}

/** The spool limit for `dir`: $NIX2OCI_SPOOL_LIMIT, else its file system's free space less the reserve. */
export async function spoolLimit(dir: string, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const text = env[SPOOL_LIMIT_ENV];
  if (text !== undefined && text !== '') {
    const size = parseByteSize(text);
    if (size === null || size <= 0) throw new UserError(`${SPOOL_LIMIT_ENV} must be a size such as 20G, got "${text}"`);
    return size;
  }
  let fs;
  try {
    fs = await statfs(dir);
  } catch (err) {
    throw new UserError(`cannot spool to ${dir}: ${describeOsError(err)}`, { cause: err });
  }
  const total = fs.blocks * fs.bsize;
  const free = fs.bavail * fs.bsize;
  return Math.max(0, free - Math.min(MAX_RESERVE, Math.ceil(total * RESERVE_SHARE)));
}

/** Reads a stream by pulling chunks, handing each to `sink` (the spool file) as it is taken in. */
class SpoolReader {
  readonly #chunks: AsyncIterator<Buffer>;
  #buffer: Buffer = Buffer.alloc(0);
  #pos = 0;
  /** Bytes taken in from the stream (and handed to the sink). */
  #received = 0;
  #ended = false;

  constructor(
    stream: Readable,
    readonly label: string,
    readonly limit: number,
    /** Where the limit comes from, for messages. */
    readonly limitReason: string,
    readonly dir: string,
    private readonly sink: (chunk: Buffer) => Promise<void>,
  ) {
    this.#chunks = stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  }

  /** Offset of the next unread byte. */
  get position(): number {
    return this.#received - (this.#buffer.length - this.#pos);
  }

  fail(at: number, message: string): UserError {
    return new UserError(`${this.label}: byte ${at}: ${message}`);
  }

  /** The stream outgrows the limit; `what` says what gave it away (a declared file size). */
  tooBig(what = 'the export'): UserError {
    return new UserError(
      `${this.label}: ${what} is larger than the ${formatBytes(this.limit)} the export may take in ${this.dir} ` +
        `(${this.limitReason}); ` +
        `give the export as a file instead, or spool to a larger file system (TMPDIR, --cache-dir, $${SPOOL_LIMIT_ENV})`,
    );
  }

  /** Pulls one more chunk; false at the end of the stream. */
  async #more(): Promise<boolean> {
    if (this.#ended) return false;
    let next: IteratorResult<Buffer>;
    try {
      next = await this.#chunks.next();
    } catch (err) {
      throw new UserError(`${this.label}: read failed at byte ${this.#received}: ${describeOsError(err)}`, { cause: err });
    }
    if (next.done) {
      this.#ended = true;
      return false;
    }
    const chunk = Buffer.isBuffer(next.value) ? next.value : Buffer.from(next.value);
    if (this.#received + chunk.length > this.limit) throw this.tooBig();
    await this.sink(chunk);
    this.#received += chunk.length;
    const rest = this.#buffer.subarray(this.#pos);
    this.#buffer = rest.length === 0 ? chunk : Buffer.concat([rest, chunk]);
    this.#pos = 0;
    return true;
  }

  /** The next `n` bytes (n small); null when the stream ends first. */
  async take(n: number): Promise<Buffer | null> {
    while (this.#buffer.length - this.#pos < n) if (!(await this.#more())) return null;
    const bytes = this.#buffer.subarray(this.#pos, this.#pos + n);
    this.#pos += n;
    return bytes;
  }

  /** Passes over `n` bytes (file contents); false when the stream ends first. */
  async skip(n: number): Promise<boolean> {
    let left = n;
    for (;;) {
      const here = Math.min(left, this.#buffer.length - this.#pos);
      this.#pos += here;
      left -= here;
      if (left === 0) return true;
      if (!(await this.#more())) return false;
    }
  }

  /** Whether anything follows. */
  async atEnd(): Promise<boolean> {
    return this.#buffer.length - this.#pos === 0 && !(await this.#more());
  }
}

class EndOfStream extends Error {
  constructor(readonly at: number) {
    super(`ends at byte ${at}`);
  }
}

/** The export's framing, parsed as far as needed to find its end and the sizes it declares. */
class ExportFraming {
  constructor(private readonly r: SpoolReader) {}

  async run(): Promise<void> {
    try {
      await this.#export();
    } catch (err) {
      if (err instanceof EndOfStream) throw new UserError(`${this.r.label}: unexpected end of the export at byte ${err.at}`);
      throw err;
    }
  }

  async #export(): Promise<void> {
    const r = this.r;
    let index = 1;
    for (; ; index++) {
      const at = r.position;
      const flag = await this.#u64();
      if (flag === 0n) break;
      if (flag !== 1n) {
        throw r.fail(at, index === 1 ? `not a nix-store --export stream (it starts with 0x${flag.toString(16)}, not 1)` : `expected 1 (another path) or 0 (end of export), got 0x${flag.toString(16)}`);
      }
      const narAt = r.position;
      if ((await this.#string()) !== 'nix-archive-1') throw r.fail(narAt, `path #${index}: not a NAR (no nix-archive-1 header)`);
      await this.#node(0);
      const magicAt = r.position;
      if ((await this.#u64()) !== EXPORT_MAGIC) throw r.fail(magicAt, `path #${index}: wrong export magic after the NAR (expected "NIXE")`);
      await this.#string(); // store path
      const countAt = r.position;
      const count = await this.#u64();
      if (count > 1_000_000n) throw r.fail(countAt, `path #${index}: reference count ${count} is not plausible`);
      for (let i = 0n; i < count; i++) await this.#string();
      await this.#string(); // deriver
      const signatureAt = r.position;
      const signature = await this.#u64();
      if (signature === 1n) await this.#string();
      else if (signature !== 0n) throw r.fail(signatureAt, `path #${index}: expected the signature flag 0 or 1`);
    }
    const end = r.position;
    if (!(await r.atEnd())) {
      if (index === 1) throw r.fail(end, 'not a nix-store --export stream: it starts with its end (0) and data follows');
      throw r.fail(end, `data after the end of the export (its final 0 at byte ${end - 8}); concatenated exports must be given as separate files`);
    }
  }

  async #node(depth: number): Promise<void> {
    const r = this.r;
    if (depth > MAX_DEPTH) throw r.fail(r.position, `directories nested deeper than ${MAX_DEPTH}`);
    await this.#expect('(');
    await this.#expect('type');
    const typeAt = r.position;
    const type = await this.#string();
    if (type === 'regular') {
      let tag = await this.#string();
      if (tag === 'executable') {
        await this.#string();
        tag = await this.#string();
      }
      if (tag !== 'contents') throw r.fail(r.position, 'expected the contents of a regular file');
      const sizeAt = r.position;
      const size = await this.#u64();
      const padded = size + ((8n - (size % 8n)) % 8n);
      if (padded > BigInt(r.limit - r.position)) throw r.tooBig(`byte ${sizeAt}: a file of ${size} bytes declared there`);
      if (!(await r.skip(Number(padded)))) throw new EndOfStream(r.position);
    } else if (type === 'symlink') {
      await this.#expect('target');
      await this.#string();
    } else if (type === 'directory') {
      for (;;) {
        const tagAt = r.position;
        const tag = await this.#string();
        if (tag === ')') return;
        if (tag !== 'entry') throw r.fail(tagAt, 'expected a directory entry or its end');
        await this.#expect('(');
        await this.#expect('name');
        await this.#string();
        await this.#expect('node');
        await this.#node(depth + 1);
        await this.#expect(')');
      }
    } else {
      throw r.fail(typeAt, 'unknown node type (expected regular, symlink or directory)');
    }
    await this.#expect(')');
  }

  async #u64(): Promise<bigint> {
    const bytes = await this.r.take(8);
    if (!bytes) throw new EndOfStream(this.r.position);
    return bytes.readBigUInt64LE(0);
  }

  async #string(): Promise<string> {
    const at = this.r.position;
    const length = await this.#u64();
    if (length > BigInt(MAX_STRING)) throw this.r.fail(at, `a string of ${length} bytes where a name or tag belongs (at most ${MAX_STRING})`);
    const n = Number(length);
    const bytes = await this.r.take(n + ((8 - (n % 8)) % 8));
    if (!bytes) throw new EndOfStream(this.r.position);
    return bytes.toString('latin1', 0, n);
  }

  async #expect(token: string): Promise<void> {
    const at = this.r.position;
    const got = await this.#string();
    if (got !== token) throw this.r.fail(at, `expected the NAR token ${JSON.stringify(token)}`);
  }
}
