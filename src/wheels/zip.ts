/**
 * Reading a wheel's zip: the central directory (names, sizes, modes; see central-directory.ts) and one
 * entry's bytes at a time, by seeking. This module adds the checks a wheel needs before anything is
 * installed from it, each failing with a UserError naming the file and entry:
 * the archive is whole (central directory present and readable, every entry's data inside the file
 * and before the central directory, no two entries sharing bytes), names are safe relative paths,
 * no name appears twice, only stored or deflated entries, no encryption.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import zlib, { createInflateRaw, inflateRawSync } from 'node:zlib';
import { rawZlib } from '../util/raw-zlib.js';
import { UserError } from '../util/errors.js';
import { whiteoutInPath } from '../tar/whiteout.js';
import { BlockReader } from './block-reader.js';
import { FLAG_ENCRYPTED, readCentralDirectory, type CentralEntry } from './central-directory.js';
import { localHeaderDisagreement, type CentralRecord } from './unzip-worker.js';

export interface ZipEntry {
  /** Decoded name, without the trailing `/` a directory entry has. */
  name: string;
  isDir: boolean;
  /** Uncompressed size in bytes. */
  size: number;
  compressedSize: number;
  /** Unix permission bits (`0o755`) when the zip was made on Unix, otherwise null. */
  unixMode: number | null;
  /** Byte offset of the entry's local header in the file (for messages). */
  offset: number;
  /** What its local header must agree with. */
  central: CentralRecord;
}

/** Zip "version made by" host 3 = Unix: only then do the high 16 bits of the external attributes hold st_mode. */
const HOST_UNIX = 3;
const LOCAL_HEADER_FIXED_SIZE = 30;
const LOCAL_HEADER_SIGNATURE = 0x04034b50;
/** Entries this small (both sizes) are inflated in one synchronous call: far cheaper than a zlib stream each. */
const SMALL_ENTRY = 1 << 20;
/** Bytes read or inflated at a time by readInPlace. */
const PIECE_SIZE = 1 << 20;

export class ZipReader {
  private constructor(
    readonly file: string,
    private readonly blocks: BlockReader,
    private readonly handle: FileHandle,
    /** In central directory order (those asked for, when reopened). */
    readonly entries: ZipEntry[],
  ) {}

  /**
   * The wheel again, for `entries` read from its directory before (their local headers are checked
   * again as they are read): a second read of a few entries without parsing a directory of 20,000.
   */
  static async reopen(file: string, entries: ZipEntry[]): Promise<ZipReader> {
    const { handle, blocks } = await openFile(file);
    return new ZipReader(file, blocks, handle, entries);
  }

  static async open(file: string): Promise<ZipReader> {
    const { handle, blocks } = await openFile(file);
    try {
      let directory;
      try {
        directory = await readCentralDirectory(blocks);
      } catch (err) {
        throw zipOpenError(file, err);
      }
      const entries = directory.entries.map((central) => toZipEntry(file, central));
      checkNames(file, entries);
      checkDataRanges(file, entries, directory.offset);
      return new ZipReader(file, blocks, handle, entries);
    } catch (err) {
      await handle.close();
      if (err instanceof UserError) throw err;
      throw new UserError(`${file}: not a whole zip file: bad central directory: ${(err as Error).message}`, { cause: err });
    }
  }

  /**
   * The entry's uncompressed bytes, in chunks. The caller checks the content (size and hash against
   * RECORD); zip-level failures (bad local header, inflate error) are thrown as UserErrors.
   */
  async *read(entry: ZipEntry): AsyncGenerator<Buffer> {
    const dataStart = await this.dataStart(entry);
    try {
      if (entry.central.compressionMethod === 0) {
        yield* this.blocks.chunks(dataStart, entry.compressedSize);
        return;
      }
      if (entry.compressedSize <= SMALL_ENTRY && entry.size <= SMALL_ENTRY) {
        const compressed = await this.blocks.read(dataStart, entry.compressedSize);
        // One byte over the stated size is enough for the caller to see the entry is too long.
        yield inflateRawSync(compressed, { maxOutputLength: entry.size + 1, chunkSize: Math.max(64, entry.size + 1) });
        return;
      }
      const inflate = Readable.from(this.blocks.chunks(dataStart, entry.compressedSize)).pipe(createInflateRaw({ chunkSize: 256 << 10 }));
      try {
        for await (const chunk of inflate) yield chunk as Buffer;
      } finally {
        inflate.destroy();
      }
    } catch (err) {
      if (err instanceof UserError) throw err;
      const code = (err as NodeJS.ErrnoException).code;
      const message = code === 'ERR_BUFFER_TOO_LARGE' ? `inflates to more than its ${entry.size} bytes` : (err as Error).message;
      throw new UserError(`${this.file}: entry ${entry.name} (data at byte ${dataStart}): ${message}`, { cause: err });
    }
  }

  /**
   * The entry's bytes as views of one buffer that the next piece overwrites: for a reader that copies
   * what it keeps (the library check's second read of a large library, which may stop early), with no
   * memory made per piece: zlib's streams and the block cache made ten MiB of garbage for one
   * library, at the end of a build, where its memory peaks. Checks nothing of the content (the first
   * read did); zip-level failures are UserErrors as in `read`.
   */
  async *readInPlace(entry: ZipEntry): AsyncGenerator<Buffer> {
    const stored = entry.central.compressionMethod === 0;
    const inflater = stored ? null : rawZlib(zlib, 'inflateRaw');
    if (!stored && !inflater) return yield* this.read(entry);
    const dataStart = await this.dataStart(entry);
    const input = Buffer.allocUnsafeSlow(Math.min(PIECE_SIZE, Math.max(1, entry.compressedSize)));
    const out = inflater ? Buffer.allocUnsafeSlow(PIECE_SIZE) : input;
    try {
      let read = 0;
      let pending = input.subarray(0, 0);
      for (;;) {
        if (pending.length === 0 && read < entry.compressedSize) {
          pending = input.subarray(0, Math.min(input.length, entry.compressedSize - read));
          for (let got = 0; got < pending.length; ) {
            const { bytesRead } = await this.handle.read(pending, got, pending.length - got, dataStart + read + got);
            if (bytesRead === 0) throw new Error(`unexpected end of file at byte ${dataStart + read + got}`);
            got += bytesRead;
          }
          read += pending.length;
        }
        if (!inflater) {
          if (pending.length === 0) return;
          yield pending;
          pending = pending.subarray(pending.length);
          continue;
        }
        const last = read === entry.compressedSize;
        const [consumed, written] = inflater.step(pending, out, last);
        pending = pending.subarray(consumed);
        if (written > 0) yield out.subarray(0, written);
        // Room left in `out` with input left (or none to come): the stream has ended.
        if (written < out.length && (last || pending.length > 0)) return;
      }
    } catch (err) {
      throw new UserError(`${this.file}: entry ${entry.name} (data at byte ${dataStart}): ${(err as Error).message}`, { cause: err });
    }
  }

  /**
   * Where the entry's data begins, from its local header (one
   * cached read instead of a chain of callbacks, which counts with tens of thousands of entries).
   * The local header must agree with the central directory (name, compression, encryption, and the
   * CRC and sizes when it states them): a zip whose two views differ shows one file to the tools that
   * read local headers and another to those that read the directory, and Python's zipfile refuses it.
   */
  private async dataStart(entry: ZipEntry): Promise<number> {
    const fail = (why: string) => new UserError(`${this.file}: entry ${JSON.stringify(entry.name)} (local header at byte ${entry.offset}): ${why}`);
    if (entry.offset + LOCAL_HEADER_FIXED_SIZE > this.blocks.size) throw fail('past the end of the file');
    let header: Buffer;
    try {
      header = await this.blocks.read(entry.offset, LOCAL_HEADER_FIXED_SIZE);
    } catch (err) {
      throw fail((err as Error).message);
    }
    if (header.readUInt32LE(0) !== LOCAL_HEADER_SIGNATURE) throw fail(`bad signature 0x${header.readUInt32LE(0).toString(16)}`);
    const nameLength = header.readUInt16LE(26);
    const start = entry.offset + LOCAL_HEADER_FIXED_SIZE + nameLength + header.readUInt16LE(28);
    if (entry.offset + LOCAL_HEADER_FIXED_SIZE + nameLength > this.blocks.size) throw fail('its name runs past the end of the file');
    const localName = nameLength === 0 ? Buffer.alloc(0) : await this.blocks.read(entry.offset + LOCAL_HEADER_FIXED_SIZE, nameLength);
    const disagreement = localHeaderDisagreement(header, localName, entry.central);
    if (disagreement) throw fail(`the local header disagrees with the central directory: ${disagreement}`);
    if (start + entry.compressedSize > this.blocks.size) {
      throw fail(`its ${entry.compressedSize} bytes of data run past the end of the file (${this.blocks.size} bytes)`);
    }
    return start;
  }

  /** The whole (small) entry as text; refuses entries over `limit` bytes. */
  async readText(entry: ZipEntry, limit: number): Promise<string> {
    if (entry.size > limit) throw new UserError(`${this.file}: ${entry.name} is ${entry.size} bytes, more than the ${limit} allowed`);
    const chunks: Buffer[] = [];
    let total = 0;
    for await (const chunk of this.read(entry)) {
      total += chunk.length;
      if (total > entry.size) break;
      chunks.push(chunk);
    }
    if (total !== entry.size) throw sizeMismatch(this.file, entry, total);
    return Buffer.concat(chunks).toString('utf8');
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

/** The file open for positional reads through a block cache; a missing or odd file is a UserError. */
async function openFile(file: string): Promise<{ handle: FileHandle; blocks: BlockReader }> {
  let handle: FileHandle;
  try {
    handle = await open(file, 'r');
  } catch (err) {
    throw zipOpenError(file, err);
  }
  try {
    const stat = await handle.stat();
    if (!stat.isFile()) throw Object.assign(new Error('not a regular file'), { code: stat.isDirectory() ? 'EISDIR' : 'ENOTREG' });
    return { handle, blocks: new BlockReader(handle, stat.size) };
  } catch (err) {
    await handle.close();
    throw zipOpenError(file, err);
  }
}

export function sizeMismatch(file: string, entry: ZipEntry, actual: number): UserError {
  return new UserError(`${file}: entry ${entry.name} holds ${actual} bytes, the zip directory says ${entry.size}`);
}

function zipOpenError(file: string, err: unknown): UserError {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return new UserError(`${file}: no such file`, { cause: err });
  if (code === 'EISDIR') return new UserError(`${file}: is a directory, not a wheel`, { cause: err });
  if (code === 'ENOTREG') return new UserError(`${file}: not a regular file`, { cause: err });
  if (code === 'EACCES') return new UserError(`${file}: permission denied`, { cause: err });
  const message = (err as Error).message;
  if (/End of central directory record signature not found/.test(message)) {
    return new UserError(`${file}: not a whole zip file: no end-of-central-directory record (truncated, or not a zip)`, { cause: err });
  }
  return new UserError(`${file}: not a whole zip file: ${message}`, { cause: err });
}

function toZipEntry(file: string, raw: CentralEntry): ZipEntry {
  // Backslashes are kept, so checkNames can refuse them instead of guessing.
  const decoded = raw.fileName;
  const isDir = decoded.endsWith('/');
  const name = isDir ? decoded.replace(/\/+$/, '') : decoded;
  const where = () => `${file}: entry ${JSON.stringify(decoded)} (at byte ${raw.relativeOffsetOfLocalHeader})`;
  if (raw.generalPurposeBitFlag & FLAG_ENCRYPTED) throw new UserError(`${where()} is encrypted`);
  if (raw.compressionMethod !== 0 && raw.compressionMethod !== 8) {
    throw new UserError(`${where()} uses compression method ${raw.compressionMethod}; wheels use stored (0) or deflate (8)`);
  }
  const unixMode = raw.versionMadeBy >> 8 === HOST_UNIX ? (raw.externalFileAttributes >>> 16) & 0o7777 : null;
  return {
    name,
    isDir,
    size: raw.uncompressedSize,
    compressedSize: raw.compressedSize,
    unixMode,
    offset: raw.relativeOffsetOfLocalHeader,
    central: {
      fileNameBytes: raw.fileNameBytes,
      generalPurposeBitFlag: raw.generalPurposeBitFlag,
      compressionMethod: raw.compressionMethod,
      crc32: raw.crc32,
      compressedSize: raw.compressedSize,
      uncompressedSize: raw.uncompressedSize,
    },
  };
}

/** A `..` component; an empty or `.` component (the name's start or end, or between two slashes). */
const DOT_DOT_COMPONENT = /(?:^|\/)\.\.(?:\/|$)/;
const EMPTY_OR_DOT_COMPONENT = /(?:^|\/)\.?(?:\/|$)/;

/** Why a name is not a safe relative path, or null. */
function nameProblem(name: string): string | null {
  if (name === '') return 'has an empty name';
  if (name.startsWith('/') || /^[A-Za-z]:/.test(name)) return 'is an absolute path';
  if (name.includes('\\')) return 'contains a backslash';
  if (name.includes('\0')) return 'contains a NUL byte';
  // As components, without splitting the name (every entry of every wheel comes here).
  if (DOT_DOT_COMPONENT.test(name)) return 'contains "..": it would escape the install directory';
  if (EMPTY_OR_DOT_COMPONENT.test(name)) return 'has an empty or "." path component';
  const whiteout = whiteoutInPath(name);
  if (whiteout) return `has a component ${JSON.stringify(whiteout.component)} that ${whiteout.problem}`;
  return null;
}

/** Safe relative names only: what a wheel holds is installed under a prefix and must stay there. */
function checkNames(file: string, entries: ZipEntry[]): void {
  const kinds = new Map<string, 'file' | 'dir'>();
  for (const entry of entries) {
    const name = entry.name;
    const problem = nameProblem(name);
    const where = () => `${file}: entry ${JSON.stringify(name + (entry.isDir ? '/' : ''))} (at byte ${entry.offset})`;
    if (problem) throw new UserError(`${where()} ${problem}`);
    const previous = kinds.get(name);
    if (previous !== undefined) {
      if (previous === 'dir' && entry.isDir) continue; // a directory listed twice changes nothing installed
      throw new UserError(`${where()} appears twice in the zip (duplicate entry)`);
    }
    kinds.set(name, entry.isDir ? 'dir' : 'file');
  }
  // A file may not also be a directory (`a` and `a/b`).
  for (const entry of entries) {
    for (let slash = entry.name.indexOf('/'); slash > 0; slash = entry.name.indexOf('/', slash + 1)) {
      const parent = entry.name.slice(0, slash);
      if (kinds.get(parent) === 'file') {
        throw new UserError(`${file}: entry ${JSON.stringify(entry.name)} lies under ${JSON.stringify(parent)}, which is a file`);
      }
    }
  }
}

/**
 * Every entry's header and data lie inside the file, before the central directory, without overlap.
 * Overlapping entries are how "zip bombs" reuse bytes; a cut file puts data past the end.
 * The local header's variable part is checked when the entry is opened; here its fixed lower bound is used.
 */
function checkDataRanges(file: string, entries: ZipEntry[], centralDirectoryOffset: number): void {
  const byOffset = [...entries].sort((a, b) => a.offset - b.offset);
  for (let i = 0; i < byOffset.length; i++) {
    const entry = byOffset[i]!;
    const end = entry.offset + LOCAL_HEADER_FIXED_SIZE + entry.central.fileNameBytes.length + entry.compressedSize;
    const next = byOffset[i + 1];
    const limit = next ? next.offset : centralDirectoryOffset;
    if (end > limit) {
      const what = next ? `the next entry ${next.name} at byte ${next.offset}` : `the central directory at byte ${centralDirectoryOffset}`;
      throw new UserError(`${file}: entry ${entry.name} (at byte ${entry.offset}, ${entry.compressedSize} bytes) runs into ${what}`);
    }
  }
}
