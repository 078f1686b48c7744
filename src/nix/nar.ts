/**
 * Streaming reader of NARs (`nix-archive-1`), the serialisation of one store path.
 *
 * Grammar (every token a string: u64 LE length, bytes, zero padding to a multiple of 8):
 *   nar       = "nix-archive-1" node
 *   node      = "(" "type" ( regular | symlink | directory ) ")"
 *   regular   = "regular" [ "executable" "" ] "contents" <u64 size> <bytes> <padding>
 *   symlink   = "symlink" "target" <target>
 *   directory = "directory" { "entry" "(" "name" <name> "node" node ")" }
 * Entry names are checked like Nix does (not empty, `.`, `..`, no `/` or NUL, strictly sorted by bytes).
 * Beyond Nix: names and symlink targets must be UTF-8 and targets non-empty without NUL, since image layers
 * (tar, PAX) could not carry anything else faithfully; names are at most 255 bytes, targets 4095 (Linux's limits);
 * and no name may start with `.wh.`, which a layer would carry as a whiteout.
 */
import { TextDecoder } from 'node:util';
import { endianness } from 'node:os';
import type { NarNode, NarVisitor, StorePathInfo } from './types.js';
import { UserError } from '../util/errors.js';
import { ChunkReader, EndOfDataError, ReadFailedError, closeFd, openForReading } from './chunk-reader.js';
import { quote } from '../util/quote.js';
import { WHITEOUT_PREFIX, whiteoutProblem } from '../tar/whiteout.js';

/** Linux's NAME_MAX: no file system Nix runs on takes a longer entry name. */
const MAX_NAME_BYTES = 255;
/** Linux's PATH_MAX less the NUL: symlink(2) takes no longer target. */
const MAX_TARGET_BYTES = 4095;
/** Longer than any tag; a longer string where a tag belongs is reported by its length alone. */
const MAX_TAG_BYTES = 64;
/** Small chunks suit listing: most of a big file's contents is skipped, and a read past them is wasted. */
const LIST_CHUNK = 64 << 10;

/** Where a NAR is being read, for messages. */
export interface NarContext {
  /** The file as the user named it. */
  file: string;
  /** Names the NAR: its store path, or e.g. `path #3 (store path not yet read)`. */
  label: string;
  /**
   * When set, problems with names and symlink targets — where the NAR's grammar is intact — are passed here
   * instead of thrown, so a caller that learns the store path after the NAR can report it with the path.
   * Parsing goes on; only the first problem matters to the caller.
   */
  onNameProblem?: (problem: NarProblem) => void;
  /** Message for data ending early; default `unexpected end of file at byte N`. */
  describeEnd?: (at: number) => string;
}

/** A problem at `offset`, inside the node at `entry` ('' for the root; null when not inside a node). */
export interface NarProblem {
  offset: number;
  entry: string | null;
  message: string;
}

/** Formats a NAR problem as the one-line message of a UserError. */
export function narMessage(file: string, label: string, problem: NarProblem): string {
  return `${file}: byte ${problem.offset}: ${label}: ${entryPrefix(problem.entry)}${problem.message}`;
}

function entryPrefix(entry: string | null): string {
  if (entry === null) return '';
  return entry === '' ? 'NAR root: ' : `entry ${quote(entry)}: `;
}

/** A NAR string token as bytes (length, contents, zero padding) and as little-endian 32-bit words for matching. */
class Token {
  readonly bytes: Buffer;
  readonly words: Uint32Array;
  constructor(readonly text: string) {
    const data = Buffer.from(text, 'latin1');
    this.bytes = Buffer.alloc(8 + padded(data.length));
    this.bytes.writeUInt32LE(data.length, 0);
    data.copy(this.bytes, 8);
    this.words = new Uint32Array(this.bytes.length / 4);
    for (let i = 0; i < this.words.length; i++) this.words[i] = this.bytes.readUInt32LE(i * 4);
  }
}

const T = {
  magic: new Token('nix-archive-1'),
  open: new Token('('),
  close: new Token(')'),
  type: new Token('type'),
  regular: new Token('regular'),
  directory: new Token('directory'),
  symlink: new Token('symlink'),
  executable: new Token('executable'),
  contents: new Token('contents'),
  target: new Token('target'),
  entry: new Token('entry'),
  name: new Token('name'),
  node: new Token('node'),
  empty: new Token(''),
};

function padded(n: number): number {
  return (n + 7) & ~7;
}

const LITTLE_ENDIAN = endianness() === 'LE';

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** Decodes UTF-8, or returns null when the bytes are not valid UTF-8 (Buffer#toString would replace them silently). */
function decodeUtf8(buf: Buffer, start: number, end: number): string | null {
  const text = buf.toString('utf8', start, end);
  if (!text.includes('\ufffd')) return text;
  try {
    return strictUtf8.decode(buf.subarray(start, end));
  } catch {
    return null;
  }
}

/**
 * A regular file's contents as handed to `NarVisitor.regular`: chunks that are views into the reader's buffer.
 * A chunk is valid only until the consumer asks for the next one (or returns from `regular`); keep it longer
 * and it must be copied. Consuming nothing (or part) is fine: the parser skips the rest.
 */
class FileContents implements AsyncIterableIterator<Buffer> {
  #reader: ChunkReader;
  #remaining: number;
  #live = true;

  constructor(reader: ChunkReader, size: number) {
    this.#reader = reader;
    this.#remaining = size;
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  next(): Promise<IteratorResult<Buffer>> {
    if (!this.#live) return Promise.reject(new Error('NAR file contents read after the visitor returned'));
    if (this.#remaining === 0) return Promise.resolve({ value: undefined, done: true });
    const r = this.#reader;
    const available = r.end - r.pos;
    if (available === 0) return this.#nextAfterRead();
    const n = available < this.#remaining ? available : this.#remaining;
    const chunk = r.buf.subarray(r.pos, r.pos + n);
    r.pos += n;
    this.#remaining -= n;
    return Promise.resolve({ value: chunk, done: false });
  }

  async #nextAfterRead(): Promise<IteratorResult<Buffer>> {
    await this.#reader.advance();
    return this.next();
  }

  return(): Promise<IteratorResult<Buffer>> {
    return Promise.resolve({ value: undefined, done: true });
  }

  /** Ends the visitor's access; returns how many bytes it left unread. */
  finish(): number {
    this.#live = false;
    return this.#remaining;
  }
}

interface DirectoryFrame {
  path: string;
  /** The previous entry's name. */
  previousName: string | null;
  /** Its bytes when it is not plain ASCII (for ASCII, string order is byte order, which is how Nix sorts). */
  previousBytes: Buffer | null;
}

/*
 * Lookahead, in bytes, that makes a group of tokens parse without waiting: the parser buffers this much
 * (or up to the end of the data) first, then reads the group synchronously. A token that is still incomplete
 * then can only mean the data ends there.
 */
/** Room for the last token of a group when it is not the expected one and is quoted in a message. */
const ANY_TAG = 8 + MAX_TAG_BYTES;
/** `(` `type` `directory`, or `(` `type` `regular` `executable` `` `contents` <size>. */
const NODE_HEAD = 16 + 16 + 24 + 24 + 8 + ANY_TAG;
/** `)` closing an entry, then `entry` `(` `name` <name> `node` (or the `)` closing a directory). */
const ENTRY_HEAD = 16 + 16 + 16 + 16 + 8 + padded(MAX_NAME_BYTES) + ANY_TAG;
/** `target` <target> `)`. */
const SYMLINK_REST = 16 + 8 + padded(MAX_TARGET_BYTES) + ANY_TAG;
/** Padding after contents, then `)`. */
const REGULAR_TAIL = 8 + ANY_TAG;

class NarParser {
  /** Path of the node being read, for messages; null before the root node starts. */
  entry: string | null = null;

  constructor(
    readonly r: ChunkReader,
    readonly visitor: NarVisitor | null,
    readonly ctx: NarContext,
  ) {}

  fail(offset: number, message: string, entry: string | null = this.entry): UserError {
    return new UserError(narMessage(this.ctx.file, this.ctx.label, { offset, entry, message }));
  }

  problem(offset: number, message: string, entry: string): void {
    if (this.ctx.onNameProblem) this.ctx.onNameProblem({ offset, entry, message });
    else throw this.fail(offset, message, entry);
  }

  async run(): Promise<void> {
    try {
      await this.#parse();
    } catch (err) {
      throw this.#explain(err);
    }
  }

  #explain(err: unknown): unknown {
    if (err instanceof EndOfDataError) {
      const what = this.ctx.describeEnd?.(err.at) ?? `unexpected end of file at byte ${err.at}`;
      return new UserError(`${this.ctx.file}: ${this.ctx.label}: ${entryPrefix(this.entry)}${what}`);
    }
    if (err instanceof ReadFailedError) {
      return new UserError(`${this.ctx.file}: ${this.ctx.label}: ${entryPrefix(this.entry)}${err.message}`, { cause: err });
    }
    return err;
  }

  /**
   * Buffers `n` bytes, or all that is left of the data if less. Undefined when already buffered.
   * If the file ends early, the lookahead stops there quietly: the token that is cut short reports it.
   */
  #ensure(n: number): Promise<void> | undefined {
    const r = this.r;
    if (r.end - r.pos >= n) return undefined;
    const left = r.limit - r.position;
    const p = r.need(n < left ? n : left);
    return p?.catch((err: unknown) => {
      if (!(err instanceof EndOfDataError) || r.endedAt === null) throw err;
    });
  }

  async #parse(): Promise<void> {
    const r = this.r;
    let wait = this.#ensure(T.magic.bytes.length);
    if (wait) await wait;
    if (!this.#match(T.magic)) {
      const at = r.position;
      throw this.fail(at, `bad NAR magic: expected ${quote(T.magic.text)}, got ${this.#describeToken()}`);
    }

    const dirs: DirectoryFrame[] = [];
    let path = '';
    for (;;) {
      this.entry = path;
      wait = this.#ensure(NODE_HEAD);
      if (wait) await wait;
      this.#expect(T.open);
      this.#expect(T.type);
      let childDone = true;
      if (this.#match(T.regular)) {
        let executable = false;
        if (this.#match(T.executable)) {
          executable = true;
          if (!this.#match(T.empty)) throw this.fail(r.position, `the executable marker has a value: ${this.#describeToken()}`);
        }
        this.#expect(T.contents);
        const size = this.#size();
        let left = size;
        if (this.visitor) {
          const contents = new FileContents(r, size);
          const v = this.visitor.regular({ type: 'regular', path, executable, size }, contents);
          if (v) await v;
          left = contents.finish();
        }
        if (left > 0) {
          const s = r.skip(left);
          if (s) await s;
        }
        wait = this.#ensure(REGULAR_TAIL);
        if (wait) await wait;
        this.#padding(size);
        this.#expect(T.close);
      } else if (this.#match(T.directory)) {
        const v = this.visitor?.directory({ type: 'directory', path });
        if (v) await v;
        dirs.push({ path, previousName: null, previousBytes: null });
        childDone = false;
      } else if (this.#match(T.symlink)) {
        wait = this.#ensure(SYMLINK_REST);
        if (wait) await wait;
        this.#expect(T.target);
        const target = this.#target(path);
        const v = this.visitor?.symlink({ type: 'symlink', path, target });
        if (v) await v;
        this.#expect(T.close);
      } else {
        const at = r.position;
        throw this.fail(at, `unknown file type ${this.#describeToken()}`);
      }

      // Climb out of finished directories until one has another entry, or the root is done.
      let next: string | null = null;
      while (dirs.length > 0) {
        const dir = dirs[dirs.length - 1]!;
        this.entry = dir.path;
        wait = this.#ensure(ENTRY_HEAD);
        if (wait) await wait;
        if (childDone) this.#expect(T.close); // closes the entry holding the finished child
        if (this.#match(T.close)) {
          dirs.pop();
          childDone = true;
          continue;
        }
        if (!this.#match(T.entry)) {
          const at = r.position;
          throw this.fail(at, `expected tag 'entry' or ')', got ${this.#describeToken()}`);
        }
        this.#expect(T.open);
        this.#expect(T.name);
        next = this.#name(dir);
        this.#expect(T.node);
        break;
      }
      if (next === null) break;
      path = next;
    }
    this.entry = null;
  }

  /**
   * True (and the token consumed) when the next token is exactly `token`: length, bytes and zero padding,
   * compared in one go without making a string.
   */
  #match(token: Token): boolean {
    const r = this.r;
    const at = r.pos;
    const words = token.words;
    const n = words.length;
    if (r.end - at < n * 4) return false;
    if ((at & 3) === 0 && LITTLE_ENDIAN) {
      // Tokens are 8-aligned in the file and reads keep that alignment: compare whole words.
      const w = r.words;
      const first = at >>> 2;
      for (let i = 0; i < n; i++) if (w[first + i] !== words[i]) return false;
    } else {
      const buf = r.buf;
      for (let i = 0; i < n; i++) if (buf.readUInt32LE(at + i * 4) !== words[i]) return false;
    }
    r.pos = at + n * 4;
    return true;
  }

  #expect(token: Token): void {
    if (this.#match(token)) return;
    const at = this.r.position;
    throw this.fail(at, `expected tag ${quote(token.text)}, got ${this.#describeToken()}`);
  }

  /** The (unexpected) token at the current position, for a message; throws if it is cut short or badly padded. */
  #describeToken(): string {
    const r = this.r;
    const at = r.position;
    const { lo, hi } = this.#peekU64();
    if (hi !== 0 || lo > MAX_TAG_BYTES) return `a string of ${wide(lo, hi)} bytes`;
    const length = this.#length(MAX_TAG_BYTES, () => '');
    const text = r.buf.toString('latin1', r.pos + 8, r.pos + 8 + length);
    this.#checkPadding(length, at);
    return quote(text);
  }

  /** Called when a token is cut short although lookahead was buffered: the data ends there. */
  #short(): never {
    const r = this.r;
    if (r.bufferedTo >= r.limit) throw new EndOfDataError(r.limit);
    if (r.endedAt !== null) throw new EndOfDataError(r.endedAt);
    throw new Error('NAR parser: token not buffered (lookahead too small)');
  }

  /** The length of the (buffered) string token at the current position; at most `max`. */
  #length(max: number, tooLong: (n: bigint) => string): number {
    const r = this.r;
    const { lo, hi } = this.#peekU64();
    if (hi !== 0 || lo > max) throw this.fail(r.position, tooLong(wide(lo, hi)));
    if (r.end - r.pos < 8 + padded(lo)) this.#short();
    return lo;
  }

  #checkPadding(length: number, at: number, entry: string | null = this.entry): void {
    const r = this.r;
    const dataEnd = r.pos + 8 + length;
    const tokenEnd = r.pos + 8 + padded(length);
    for (let i = dataEnd; i < tokenEnd; i++) {
      if (r.buf[i] !== 0) throw this.fail(at + 8 + length, 'non-zero padding after a string', entry);
    }
  }

  /** The buffered u64 at the current position (not consumed), as its low and high 32 bits. */
  #peekU64(): { lo: number; hi: number } {
    const r = this.r;
    if (r.end - r.pos < 8) this.#short();
    return { lo: r.buf.readUInt32LE(r.pos), hi: r.buf.readUInt32LE(r.pos + 4) };
  }

  #size(): number {
    const r = this.r;
    const at = r.position;
    const { lo, hi } = this.#peekU64();
    if (hi >= 1 << 21) throw this.fail(at, `file size ${wide(lo, hi)} is too large`);
    const size = hi * 2 ** 32 + lo;
    r.pos += 8;
    // Fail before the visitor sees any of a file that cannot be complete.
    if (r.position + padded(size) > r.limit) throw new EndOfDataError(r.limit);
    return size;
  }

  #padding(size: number): void {
    const r = this.r;
    const padding = padded(size) - size;
    if (padding === 0) return;
    if (r.end - r.pos < padding) this.#short();
    for (let i = 0; i < padding; i++) {
      if (r.buf[r.pos + i] !== 0) throw this.fail(r.position, 'non-zero padding after file contents');
    }
    r.pos += padding;
  }

  /** A NAR string at the current position (not consumed): its bytes decoded as UTF-8, else as latin1 for messages. */
  #text(max: number, tooLong: (n: bigint) => string): { at: number; length: number; start: number; decoded: string | null; text: string } {
    const r = this.r;
    const at = r.position;
    const length = this.#length(max, tooLong);
    const start = r.pos + 8;
    const decoded = decodeUtf8(r.buf, start, start + length);
    return { at, length, start, decoded, text: decoded ?? r.buf.toString('latin1', start, start + length) };
  }

  #name(dir: DirectoryFrame): string {
    const r = this.r;
    const { at, length, start, decoded, text: name } = this.#text(MAX_NAME_BYTES, (n) => `an entry name of ${n} bytes is longer than the ${MAX_NAME_BYTES} allowed`);
    const ascii = decoded !== null && name.length === length;
    const path = dir.path === '' ? name : `${dir.path}/${name}`;

    if (length === 0) this.problem(at, 'empty entry name', path);
    else if (name === '.' || name === '..') this.problem(at, `name ${quote(name)} is not allowed`, path);
    else if (name.includes('/')) this.problem(at, `name ${quote(name)} contains '/'`, path);
    else if (name.includes('\0')) this.problem(at, `name ${quote(name)} contains a NUL byte`, path);
    else if (decoded === null) this.problem(at, `name ${quote(name)} is not valid UTF-8`, path);
    else if (name.startsWith(WHITEOUT_PREFIX)) this.problem(at, `name ${quote(name)} ${whiteoutProblem(name)}`, path);

    const previous = dir.previousName;
    if (previous !== null) {
      const order =
        ascii && dir.previousBytes === null
          ? previous < name ? -1 : previous === name ? 0 : 1
          : (dir.previousBytes ?? Buffer.from(previous, 'latin1')).compare(r.buf, start, start + length);
      if (order === 0) this.problem(at, `duplicate entry name ${quote(name)}`, path);
      else if (order > 0) this.problem(at, `entries are not sorted: ${quote(name)} comes after ${quote(previous)}`, path);
    }
    dir.previousName = name;
    dir.previousBytes = ascii ? null : Buffer.from(r.buf.subarray(start, start + length));
    this.#checkPadding(length, at, path);
    r.pos += 8 + padded(length);
    return path;
  }

  #target(path: string): string {
    const r = this.r;
    const { at, length, decoded, text: target } = this.#text(MAX_TARGET_BYTES, (n) => `a symlink target of ${n} bytes is longer than the ${MAX_TARGET_BYTES} allowed`);
    if (length === 0) this.problem(at, 'empty symlink target', path);
    else if (target.includes('\0')) this.problem(at, `symlink target ${quote(target)} contains a NUL byte`, path);
    else if (decoded === null) this.problem(at, `symlink target ${quote(target)} is not valid UTF-8`, path);
    this.#checkPadding(length, at, path);
    r.pos += 8 + padded(length);
    return target;
  }
}

/**
 * Parses one NAR from `reader`'s position, driving `visitor` in NAR order (depth first, entries sorted).
 * Leaves the reader just past the NAR. Every failure is a UserError naming `ctx.file`, `ctx.label`,
 * the byte offset and the entry.
 *
 * Contents: `visitor.regular` gets an async iterable of chunks that are views into the reader's buffer,
 * valid until the next chunk is asked for or `regular` returns; the parser waits for `regular` to settle
 * before touching the buffer again. A visitor that returns without consuming the contents skips them;
 * without hashing, skipped bytes are not even read. A null visitor only validates (and lets the reader hash).
 */
export function parseNar(reader: ChunkReader, visitor: NarVisitor | null, ctx: NarContext): Promise<void> {
  return new NarParser(reader, visitor, ctx).run();
}

export interface ReadNarOptions {
  /** Read size; defaults to 1 MiB. Smaller suits listing (skipped contents are not read). */
  chunkSize?: number;
}

/**
 * Re-reads a store path's NAR from the file it was indexed in (`info.source`) and drives `visitor`.
 * Fails with a UserError if the bytes no longer parse as exactly `info.narSize` bytes of NAR.
 * The hash is not checked again: indexing did that, and this is the layer writer's hot path.
 */
export async function readNar(info: StorePathInfo, visitor: NarVisitor, opts: ReadNarOptions = {}): Promise<void> {
  const { file, offset } = info.source;
  let fd: number;
  try {
    fd = await openForReading(file);
  } catch (err) {
    throw new UserError(`${file}: cannot open to read ${info.path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  const end = offset + info.narSize;
  const reader = new ChunkReader(fd, offset, end, { chunkSize: opts.chunkSize });
  try {
    await parseNar(reader, visitor, {
      file,
      label: info.path,
      describeEnd: (at) =>
        at === end
          ? `the NAR runs past its recorded size of ${info.narSize} bytes (was the file changed after it was indexed?)`
          : `unexpected end of file at byte ${at} (was the file changed after it was indexed?)`,
    });
    if (reader.position !== end) {
      throw new UserError(
        `${file}: byte ${reader.position}: ${info.path}: the NAR ends before its recorded size of ${info.narSize} bytes (was the file changed after it was indexed?)`,
      );
    }
  } finally {
    await reader.close();
    await closeFd(fd);
  }
}

/** Every node of a store path's NAR (names, types, sizes, targets), in NAR order. File contents are skipped, not read. */
export async function listNar(info: StorePathInfo): Promise<NarNode[]> {
  const nodes: NarNode[] = [];
  await readNar(
    info,
    {
      directory: (node) => void nodes.push(node),
      regular: (node) => void nodes.push(node),
      symlink: (node) => void nodes.push(node),
    },
    { chunkSize: LIST_CHUNK },
  );
  return nodes;
}

/** Thrown through the parser to stop it once readNarFile has what it wants. */
class StopReading extends Error {}

/**
 * The contents of the regular file at `relPath` ('dir/file', relative to the store path's root) in a store path,
 * or null when there is no regular file there (symlinks are not followed). A file larger than `maxBytes`
 * is a UserError: this is for small files such as a wheel's METADATA.
 */
export async function readNarFile(info: StorePathInfo, relPath: string, maxBytes: number): Promise<Buffer | null> {
  let found: Buffer | null = null;
  try {
    await readNar(
      info,
      {
        directory: () => {},
        symlink: (node) => {
          if (node.path === relPath) throw new StopReading();
        },
        regular: async (node, contents) => {
          if (node.path !== relPath) return;
          if (node.size > maxBytes) {
            throw new UserError(`${info.path}/${relPath} is ${node.size} bytes, more than the ${maxBytes} expected`);
          }
          const out = Buffer.allocUnsafe(node.size);
          let at = 0;
          for await (const chunk of contents) at += chunk.copy(out, at);
          found = out;
          throw new StopReading();
        },
      },
      { chunkSize: LIST_CHUNK },
    );
  } catch (err) {
    if (!(err instanceof StopReading)) throw err;
  }
  return found;
}

/** A u64 from its halves, exactly, for messages. */
function wide(lo: number, hi: number): bigint {
  return BigInt(hi) * 2n ** 32n + BigInt(lo);
}
