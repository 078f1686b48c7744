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
 */
import { TextDecoder } from 'node:util';
import type { NarNode, NarVisitor, StorePathInfo } from './types.js';
import { UserError } from '../util/errors.js';
import { ChunkReader, EndOfDataError, ReadFailedError, closeFd, openForReading } from './chunk-reader.js';
import { quote } from './quote.js';

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

/** A NAR string token as bytes: length, contents, zero padding. Compared whole against the input. */
class Token {
  readonly bytes: Buffer;
  constructor(readonly text: string) {
    const data = Buffer.from(text, 'latin1');
    this.bytes = Buffer.alloc(8 + padded(data.length));
    this.bytes.writeUInt32LE(data.length, 0);
    data.copy(this.bytes, 8);
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
};

function padded(n: number): number {
  return (n + 7) & ~7;
}

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
  /** The previous entry's name, as bytes: Nix orders entries by bytes. */
  previousName: Buffer | null;
}

class NarParser {
  /** Path of the node being read, for messages; null before the root node starts. */
  entry: string | null = null;

  constructor(
    readonly r: ChunkReader,
    readonly visitor: NarVisitor,
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

  async #parse(): Promise<void> {
    const r = this.r;
    const magicAt = r.position;
    if (!this.#match(T.magic)) {
      const got = await this.#tag();
      if (got !== T.magic.text) throw this.fail(magicAt, `bad NAR magic: expected ${quote(T.magic.text)}, got ${quote(got)}`);
    }

    const dirs: DirectoryFrame[] = [];
    let path = '';
    for (;;) {
      this.entry = path;
      await this.#expect(T.open);
      await this.#expect(T.type);
      const typeAt = r.position;
      let type: string;
      if (this.#match(T.regular)) type = 'regular';
      else if (this.#match(T.directory)) type = 'directory';
      else if (this.#match(T.symlink)) type = 'symlink';
      else type = await this.#tag(); // not buffered whole, or not a known type

      let childDone = true;
      if (type === 'regular') await this.#regular(path);
      else if (type === 'symlink') await this.#symlink(path);
      else if (type === 'directory') {
        const p = this.visitor.directory({ type: 'directory', path });
        if (p) await p;
        dirs.push({ path, previousName: null });
        childDone = false;
      } else throw this.fail(typeAt, `unknown file type ${quote(type)}`);

      // Climb out of finished directories until one has another entry, or the root is done.
      let next: string | null = null;
      while (dirs.length > 0) {
        const dir = dirs[dirs.length - 1]!;
        if (childDone) {
          this.entry = dir.path;
          await this.#expect(T.close); // closes the entry holding the finished child
        }
        const tagAt = r.position;
        if (this.#match(T.close)) {
          dirs.pop();
          childDone = true;
          continue;
        }
        if (!this.#match(T.entry)) {
          const got = await this.#tag();
          if (got === ')') {
            dirs.pop();
            childDone = true;
            continue;
          }
          if (got !== 'entry') throw this.fail(tagAt, `expected tag 'entry' or ')', got ${quote(got)}`, dir.path);
        }
        await this.#expect(T.open);
        await this.#expect(T.name);
        next = await this.#name(dir);
        await this.#expect(T.node);
        break;
      }
      if (next === null) break;
      path = next;
    }
    this.entry = null;
  }

  /**
   * True (and the token consumed) when the next token is buffered and equals `token` — the hot path:
   * one compare, no string made. False when it differs or is not wholly buffered; callers then use #tag.
   */
  #match(token: Token): boolean {
    const r = this.r;
    const n = token.bytes.length;
    if (r.end - r.pos < n || r.buf.compare(token.bytes, 0, n, r.pos, r.pos + n) !== 0) return false;
    r.pos += n;
    return true;
  }

  async #expect(token: Token): Promise<void> {
    if (this.#match(token)) return;
    const at = this.r.position;
    const got = await this.#tag();
    if (got !== token.text) throw this.fail(at, `expected tag ${quote(token.text)}, got ${quote(got)}`);
  }

  /** Reads any string where a tag belongs (after #match failed, e.g. because it straddles reads). */
  async #tag(): Promise<string> {
    const at = this.r.position;
    const length = await this.#stringLength(MAX_TAG_BYTES, (n) => `expected a tag, got a string of ${n} bytes`);
    const start = this.r.pos + 8;
    const text = this.r.buf.toString('latin1', start, start + length);
    this.#consumeString(length, at);
    return text;
  }

  /**
   * Makes the whole string token at the current position buffered and returns its length (≤ max).
   * The token stays unconsumed; #consumeString checks its padding and moves past it.
   */
  async #stringLength(max: number, tooLong: (n: number) => string): Promise<number> {
    const r = this.r;
    const at = r.position;
    const p = r.need(8);
    if (p) await p;
    const lo = r.buf.readUInt32LE(r.pos);
    const hi = r.buf.readUInt32LE(r.pos + 4);
    if (hi !== 0 || lo > max) throw this.fail(at, tooLong(hi * 2 ** 32 + lo));
    const q = r.need(8 + padded(lo));
    if (q) await q;
    return lo;
  }

  #consumeString(length: number, at: number): void {
    const r = this.r;
    const dataEnd = r.pos + 8 + length;
    const tokenEnd = r.pos + 8 + padded(length);
    for (let i = dataEnd; i < tokenEnd; i++) {
      if (r.buf[i] !== 0) throw this.fail(at + 8 + length, 'non-zero padding after a string');
    }
    r.pos = tokenEnd;
  }

  async #name(dir: DirectoryFrame): Promise<string> {
    const r = this.r;
    const at = r.position;
    const length = await this.#stringLength(
      MAX_NAME_BYTES,
      (n) => `an entry name of ${n} bytes is longer than the ${MAX_NAME_BYTES} allowed`,
    );
    const start = r.pos + 8;
    const bytes = r.buf.subarray(start, start + length);
    const decoded = decodeUtf8(r.buf, start, start + length);
    const name = decoded ?? r.buf.toString('latin1', start, start + length);
    const path = dir.path === '' ? name : `${dir.path}/${name}`;

    if (length === 0) this.problem(at, 'empty entry name', path);
    else if (name === '.' || name === '..') this.problem(at, `name ${quote(name)} is not allowed`, path);
    else if (name.includes('/')) this.problem(at, `name ${quote(name)} contains '/'`, path);
    else if (name.includes('\0')) this.problem(at, `name ${quote(name)} contains a NUL byte`, path);
    else if (decoded === null) this.problem(at, `name ${quote(name)} is not valid UTF-8`, path);

    const previous = dir.previousName;
    if (previous !== null) {
      const order = previous.compare(bytes);
      if (order === 0) this.problem(at, `duplicate entry name ${quote(name)}`, path);
      else if (order > 0) {
        const before = decodeUtf8(previous, 0, previous.length) ?? previous.toString('latin1');
        this.problem(at, `entries are not sorted: ${quote(name)} comes after ${quote(before)}`, path);
      }
    }
    dir.previousName = Buffer.from(bytes);
    this.#consumeString(length, at);
    return path;
  }

  async #regular(path: string): Promise<void> {
    const r = this.r;
    let executable = false;
    if (this.#match(T.executable)) {
      executable = true;
    } else if (!this.#match(T.contents)) {
      const at = r.position;
      const tag = await this.#tag();
      if (tag === 'executable') executable = true;
      else if (tag !== 'contents') throw this.fail(at, `expected tag 'contents', got ${quote(tag)}`);
    }
    if (executable) {
      const at = r.position;
      const length = await this.#stringLength(MAX_TAG_BYTES, (n) => `the executable marker has a value of ${n} bytes`);
      if (length !== 0) throw this.fail(at, 'the executable marker has a non-empty value');
      this.#consumeString(0, at);
      await this.#expect(T.contents);
    }

    const sizeAt = r.position;
    const p = r.need(8);
    if (p) await p;
    const lo = r.buf.readUInt32LE(r.pos);
    const hi = r.buf.readUInt32LE(r.pos + 4);
    if (hi >= 1 << 21) throw this.fail(sizeAt, `file size ${BigInt(hi) * 2n ** 32n + BigInt(lo)} is too large`);
    const size = hi * 2 ** 32 + lo;
    r.pos += 8;
    const paddedEnd = r.position + padded(size);
    if (paddedEnd > r.limit) throw new EndOfDataError(r.limit);

    const contents = new FileContents(r, size);
    const v = this.visitor.regular({ type: 'regular', path, executable, size }, contents);
    if (v) await v;
    const left = contents.finish();
    if (left > 0) {
      const s = r.skip(left);
      if (s) await s;
    }

    const padding = padded(size) - size;
    if (padding > 0) {
      const at = r.position;
      const q = r.need(padding);
      if (q) await q;
      for (let i = 0; i < padding; i++) {
        if (r.buf[r.pos + i] !== 0) throw this.fail(at, 'non-zero padding after file contents');
      }
      r.pos += padding;
    }
    await this.#expect(T.close);
  }

  async #symlink(path: string): Promise<void> {
    const r = this.r;
    await this.#expect(T.target);
    const at = r.position;
    const length = await this.#stringLength(
      MAX_TARGET_BYTES,
      (n) => `a symlink target of ${n} bytes is longer than the ${MAX_TARGET_BYTES} allowed`,
    );
    const start = r.pos + 8;
    const decoded = decodeUtf8(r.buf, start, start + length);
    const target = decoded ?? r.buf.toString('latin1', start, start + length);
    if (length === 0) this.problem(at, 'empty symlink target', path);
    else if (target.includes('\0')) this.problem(at, `symlink target ${quote(target)} contains a NUL byte`, path);
    else if (decoded === null) this.problem(at, `symlink target ${quote(target)} is not valid UTF-8`, path);
    this.#consumeString(length, at);
    const p = this.visitor.symlink({ type: 'symlink', path, target });
    if (p) await p;
    await this.#expect(T.close);
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
 * without hashing, skipped bytes are not even read.
 */
export function parseNar(reader: ChunkReader, visitor: NarVisitor, ctx: NarContext): Promise<void> {
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
