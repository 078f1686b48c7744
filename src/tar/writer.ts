import type { Readable } from 'node:stream';
import { UserError } from '../util/errors.js';
import { quote } from '../util/quote.js';
import { whiteoutInPath } from './whiteout.js';
import type { TarEntry, TarSink } from './entry.js';
import { BLOCK_SIZE, Typeflag, checkMtime, encodeHeaders, padToBlock, writeUstarHeader, type HeaderFields } from './header.js';

/**
 * Where a TarWriter's bytes go, in large chunks. The writer fills a buffer it acquired and submits it;
 * ownership passes back and forth, so a sink can hand buffers to another thread without copying.
 */
export interface ChunkSink {
  /** An empty buffer to fill (its old contents are garbage). */
  acquire(): Buffer | Promise<Buffer>;
  /** Takes the first `length` bytes of `chunk`; the writer no longer touches `chunk` afterwards. */
  submit(chunk: Buffer, length: number): void | Promise<void>;
}

export interface TarWriterOptions {
  /** Seconds since the epoch, written as every entry's mtime. */
  mtime: number;
}

/** A deterministic tar encoder: entries in the order added, fixed mtime, owner 0:0, modes as given. */
export class TarWriter implements TarSink {
  readonly #out: ChunkSink;
  readonly #mtime: number;
  /** Archive names written so far and their kind, to refuse duplicates and dangling hardlinks. */
  readonly #names = new Map<string, TarEntry['type']>();
  #chunk: Buffer | null = null;
  #used = 0;
  #bytes = 0;
  #finished = false;
  #busy = false;

  constructor(out: ChunkSink, options: TarWriterOptions) {
    checkMtime(options.mtime);
    this.#out = out;
    this.#mtime = options.mtime;
  }

  /** Bytes of tar written so far, end-of-archive blocks included once finished. */
  get bytesWritten(): number {
    return this.#bytes;
  }

  async add(entry: TarEntry): Promise<void> {
    if (this.#finished) throw new Error('TarWriter.add after finish');
    if (this.#busy) throw new Error('TarWriter.add called before the previous add finished');
    this.#busy = true;
    try {
      await this.#add(entry);
    } finally {
      this.#busy = false;
    }
  }

  async #add(entry: TarEntry): Promise<void> {
    checkEntry(entry, this.#names);
    // Awaits only where a chunk changed hands: most entries need no trip through the event loop.
    let pending = this.#header(headerFields(entry, this.#mtime));
    if (entry.type === 'file') {
      if (pending) await pending;
      pending = this.#writeBody(entry.name, entry.size, entry.body);
    }
    if (pending) await pending;
    this.#names.set(entry.name, entry.type);
  }

  /** Writes the end-of-archive marker (two zero blocks) and hands the last chunk to the sink. */
  async finish(): Promise<void> {
    if (this.#finished) return;
    this.#finished = true;
    await this.#zeros(2 * BLOCK_SIZE);
    if (this.#chunk && this.#used > 0) await this.#submit();
    this.#chunk = null;
  }

  /** Writes a header in place when ustar holds it and the chunk has room, else via encodeHeaders. */
  #header(fields: HeaderFields): Promise<void> | undefined {
    const chunk = this.#chunk;
    if (chunk && chunk.length - this.#used >= BLOCK_SIZE && writeUstarHeader(chunk, this.#used, fields)) {
      this.#used += BLOCK_SIZE;
      this.#bytes += BLOCK_SIZE;
      return undefined;
    }
    return this.#write(encodeHeaders(fields));
  }

  #writeBody(name: string, size: number, body: Buffer | AsyncIterable<Buffer> | Readable): Promise<void> | undefined {
    if (Buffer.isBuffer(body)) {
      if (body.length !== size) return Promise.reject(bodySizeError(name, size, body.length));
      const pending = this.#write(body);
      return pending ? pending.then(() => this.#pad(size)) : this.#pad(size);
    }
    return this.#writeStreamedBody(name, size, body);
  }

  async #writeStreamedBody(name: string, size: number, body: AsyncIterable<Buffer> | Readable): Promise<void> {
    let seen = 0;
    for await (const piece of body as AsyncIterable<Buffer>) {
      seen += piece.length;
      if (seen > size) break;
      const pending = this.#write(piece);
      if (pending) await pending;
    }
    if (seen !== size) throw bodySizeError(name, size, seen);
    const pending = this.#pad(size);
    if (pending) await pending;
  }

  /** Zeros after a body, up to the next block. */
  #pad(size: number): Promise<void> | undefined {
    const count = padToBlock(size) - size;
    if (count === 0) return undefined;
    const chunk = this.#chunk;
    if (chunk && chunk.length - this.#used >= count) {
      chunk.fill(0, this.#used, this.#used + count);
      this.#used += count;
      this.#bytes += count;
      return undefined;
    }
    return this.#zeros(count);
  }

  /** Copies bytes into the current chunk; returns a promise only when a chunk had to change hands. */
  #write(bytes: Buffer): Promise<void> | undefined {
    this.#bytes += bytes.length;
    const chunk = this.#chunk;
    if (chunk && chunk.length - this.#used >= bytes.length) {
      bytes.copy(chunk, this.#used);
      this.#used += bytes.length;
      return undefined;
    }
    return this.#writeSlow(bytes);
  }

  async #writeSlow(bytes: Buffer): Promise<void> {
    let offset = 0;
    while (offset < bytes.length) {
      if (!this.#chunk) {
        this.#chunk = await this.#out.acquire();
        this.#used = 0;
      }
      const copied = bytes.copy(this.#chunk, this.#used, offset);
      this.#used += copied;
      offset += copied;
      if (this.#used === this.#chunk.length) await this.#submit();
    }
  }

  async #zeros(count: number): Promise<void> {
    this.#bytes += count;
    while (count > 0) {
      if (!this.#chunk) {
        this.#chunk = await this.#out.acquire();
        this.#used = 0;
      }
      const n = Math.min(count, this.#chunk.length - this.#used);
      this.#chunk.fill(0, this.#used, this.#used + n);
      this.#used += n;
      count -= n;
      if (this.#used === this.#chunk.length) await this.#submit();
    }
  }

  async #submit(): Promise<void> {
    const chunk = this.#chunk!;
    const used = this.#used;
    this.#chunk = null;
    this.#used = 0;
    await this.#out.submit(chunk, used);
  }
}

/** An entry as far as its bytes in a tar go: a file's size, not its body. */
export type SizedEntry = Exclude<TarEntry, { type: 'file' }> | Omit<Extract<TarEntry, { type: 'file' }>, 'body'>;

/** An entry's header as TarWriter writes it. */
function headerFields(entry: SizedEntry, mtime: number): HeaderFields {
  const owner = 'owner' in entry && entry.owner ? { uid: entry.owner.uid, gid: entry.owner.gid } : {};
  switch (entry.type) {
    case 'directory':
      return { name: entry.name + '/', typeflag: Typeflag.directory, mode: entry.mode, size: 0, mtime, linkname: '', ...owner };
    case 'symlink':
      return { name: entry.name, typeflag: Typeflag.symlink, mode: 0o777, size: 0, mtime, linkname: entry.target };
    case 'hardlink':
      // A hard link shares its target's inode; its own mode field is ignored by extractors.
      return { name: entry.name, typeflag: Typeflag.hardlink, mode: 0o444, size: 0, mtime, linkname: entry.target };
    case 'file':
      return { name: entry.name, typeflag: Typeflag.file, mode: entry.mode, size: entry.size, mtime, linkname: '', ...owner };
  }
}

const SCRATCH_BLOCK = Buffer.alloc(BLOCK_SIZE);

/**
 * The bytes a TarWriter writes for `entries`, end-of-archive blocks included, without their bodies: an
 * uncompressed layer's size before it is made (so that an archive can place it at once).
 */
export function tarSize(entries: Iterable<SizedEntry>, mtime: number): number {
  let size = 2 * BLOCK_SIZE;
  for (const entry of entries) {
    const fields = headerFields(entry, mtime);
    size += writeUstarHeader(SCRATCH_BLOCK, 0, fields) ? BLOCK_SIZE : encodeHeaders(fields).length;
    if (entry.type === 'file') size += padToBlock(entry.size);
  }
  return size;
}

/**
 * What TarWriter checks of an entry before writing it: a normalised name not taken yet, a valid mode,
 * owner and size, a symlink target, a hard link to a file earlier in the layer (`names`: those written).
 */
function checkEntry(entry: SizedEntry, names: Map<string, TarEntry['type']>): void {
  checkName(entry.name);
  if (names.has(entry.name)) throw new UserError(`layer has two entries named ${quote(entry.name)}`);
  switch (entry.type) {
    case 'directory':
      checkMode(entry);
      checkOwner(entry);
      return;
    case 'symlink':
      if (entry.target === '' || entry.target.includes('\0')) {
        throw new UserError(`layer entry ${quote(entry.name)}: symlink target must be non-empty and without NUL bytes`);
      }
      return;
    case 'hardlink': {
      const kind = names.get(entry.target);
      if (kind !== 'file' && kind !== 'hardlink') {
        throw new UserError(`layer entry ${quote(entry.name)}: hard link target ${quote(entry.target)} is not a file earlier in the layer`);
      }
      return;
    }
    case 'file':
      checkMode(entry);
      checkOwner(entry);
      if (!Number.isSafeInteger(entry.size) || entry.size < 0) throw new UserError(`layer entry ${quote(entry.name)}: invalid size ${entry.size}`);
      return;
    default:
      throw new Error(`unknown tar entry type ${(entry as { type: string }).type}`);
  }
}

/** An entry of a tar frame: a file's body is given as bytes, or (`body` null) streamed into a gap. */
export type FramedEntry = Exclude<SizedEntry, { type: 'file' }> | (Extract<SizedEntry, { type: 'file' }> & { body: Buffer | null });

/**
 * The bytes TarWriter writes for `entries` (end-of-archive blocks included), but for the bodies given
 * as null: those are left as gaps, each to be filled with exactly its file's size in bytes. A writer
 * that copies `bytes` up to each gap's `at`, then the gap's body, then the rest writes the very tar
 * TarWriter would; so another thread can write a layer whose bodies it reads itself.
 */
export interface TarFrame {
  bytes: Buffer;
  /** Where each streamed body goes, in order: after `bytes[0, at)` (and the gaps before it). */
  gaps: { at: number; size: number }[];
}

export function tarFrame(entries: Iterable<FramedEntry>, mtime: number): TarFrame {
  checkMtime(mtime);
  const names = new Map<string, TarEntry['type']>();
  // First each entry's header (checked as TarWriter checks it) and the frame's size, then one buffer of
  // exactly that size: it is sent to another thread whole, and a wheel has thousands of entries.
  const headers: { entry: FramedEntry; fields: HeaderFields; pax: Buffer | null }[] = [];
  let size = 2 * BLOCK_SIZE;
  for (const entry of entries) {
    checkEntry(entry, names);
    const fields = headerFields(entry, mtime);
    const pax = writeUstarHeader(SCRATCH_BLOCK, 0, fields) ? null : encodeHeaders(fields);
    size += pax ? pax.length : BLOCK_SIZE;
    if (entry.type === 'file') {
      if (entry.body !== null && entry.body.length !== entry.size) throw bodySizeError(entry.name, entry.size, entry.body.length);
      size += padToBlock(entry.size) - (entry.body === null ? entry.size : 0);
    }
    headers.push({ entry, fields, pax });
    names.set(entry.name, entry.type);
  }
  // Zeroed: padding and the end-of-archive blocks are skipped over, not written.
  const bytes = Buffer.alloc(size);
  const gaps: TarFrame['gaps'] = [];
  let at = 0;
  for (const { entry, fields, pax } of headers) {
    if (pax) at += pax.copy(bytes, at);
    else {
      writeUstarHeader(bytes, at, fields);
      at += BLOCK_SIZE;
    }
    if (entry.type !== 'file') continue;
    if (entry.body === null) gaps.push({ at, size: entry.size });
    else at += entry.body.copy(bytes, at);
    at += padToBlock(entry.size) - entry.size;
  }
  return { bytes, gaps };
}

function bodySizeError(name: string, size: number, seen: number): UserError {
  return new UserError(`layer entry ${quote(name)}: file has ${seen > size ? 'more than' : 'only'} ${seen} bytes, its header says ${size}`);
}

/** Names are relative and normalised: no leading or trailing `/`, no empty, `.` or `..` component, no NUL. */
function checkName(name: string): void {
  if (name === '' || BAD_NAME.test(name)) throw new UserError(`layer entry name ${quote(name)} is not a normalised relative path`);
  // The last line of defence for every layer source (store paths, wheels, the image root): a whiteout
  // name would make runtimes delete files instead of creating this one.
  const whiteout = name.includes('.wh.') ? whiteoutInPath(name) : null;
  if (whiteout) {
    const store = /^nix\/store\/([^/]+)\/(.+)$/.exec(name);
    const where = store ? `store path /nix/store/${store[1]}: entry ${quote(store[2]!)}` : `layer entry ${quote(name)}`;
    throw new UserError(`${where}: ${quote(whiteout.component)} ${whiteout.problem}`);
  }
}

/** A leading or trailing `/`, an empty, `.` or `..` component, or a NUL. */
const BAD_NAME = /^\/|\/$|\/\/|(^|\/)\.\.?(\/|$)|\0/;

function checkOwner(entry: { name: string; owner?: { uid: number; gid: number } }): void {
  const o = entry.owner;
  if (o && !(Number.isSafeInteger(o.uid) && o.uid >= 0 && Number.isSafeInteger(o.gid) && o.gid >= 0)) {
    throw new UserError(`layer entry ${quote(entry.name)}: invalid owner ${o.uid}:${o.gid}`);
  }
}

function checkMode(entry: { name: string; mode: number }): void {
  if (!Number.isInteger(entry.mode) || entry.mode < 0 || entry.mode > 0o7777) {
    throw new UserError(`layer entry ${quote(entry.name)}: invalid mode ${entry.mode}`);
  }
}
