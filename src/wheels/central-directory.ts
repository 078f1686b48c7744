/**
 * A zip's central directory, read by hand: the end record (zip64 included), then every entry's fixed
 * fields, name and extra fields, from a window of the file in memory. This is the hot path of reading
 * a wheel (torch's has 20,000 entries, read on every build that has not seen the wheel before): yauzl
 * gave each entry two callback round trips, an event and a promise, about 19 µs each; a plain loop
 * over a buffer takes about 1. The format is APPNOTE.TXT's (sections 4.3.12 to 4.3.16, 4.5.3);
 * errors name what is wrong in yauzl's words, and names that are neither UTF-8-flagged nor plain ASCII
 * are decoded by yauzl (CP437, the Info-ZIP Unicode Path field), so they read as they always did.
 */
import { createRequire } from 'node:module';
import type { BlockReader } from './block-reader.js';
import type { CentralRecord } from './unzip-worker.js';

/** One entry as the central directory describes it. */
export interface CentralEntry extends CentralRecord {
  /** The name, decoded. */
  fileName: string;
  versionMadeBy: number;
  externalFileAttributes: number;
  relativeOffsetOfLocalHeader: number;
}

export interface CentralDirectory {
  /** Where the directory starts: every entry's data lies before it. */
  offset: number;
  entries: CentralEntry[];
}

const END_SIGNATURE = 0x06054b50;
const END_FIXED_SIZE = 22;
const ZIP64_LOCATOR_SIGNATURE = 0x07064b50;
const ZIP64_LOCATOR_SIZE = 20;
const ZIP64_END_SIGNATURE = 0x06064b50;
const ZIP64_END_SIZE = 56;
const ENTRY_SIGNATURE = 0x02014b50;
const ENTRY_FIXED_SIZE = 46;
const MAX_COMMENT = 0xffff;
/** A 32-bit field of all ones: the value is in the zip64 extra field. */
const ZIP64_MARKER = 0xffffffff;
const EXTRA_ZIP64 = 0x0001;
const EXTRA_UNICODE_PATH = 0x7075;
const FLAG_STRONG_ENCRYPTION = 0x40;
const FLAG_UTF8 = 0x800;
/** General purpose flag bit 0: the entry is encrypted. */
export const FLAG_ENCRYPTED = 0x1;
/** How much of the directory is read at once (BlockReader's block size: such reads are served from its cache). */
const WINDOW = 1 << 20;

/** Reads the directory; a malformed one is an Error whose message says what is wrong (the caller names the file). */
export async function readCentralDirectory(blocks: BlockReader): Promise<CentralDirectory> {
  const size = blocks.size;
  if (size > 2 ** 52) throw new Error('zip file too large. only file sizes up to 2^52 are supported');
  const tailLength = Math.min(ZIP64_LOCATOR_SIZE + END_FIXED_SIZE + MAX_COMMENT, size);
  const tail = await blocks.read(size - tailLength, tailLength);
  let at = tailLength - END_FIXED_SIZE;
  while (at >= 0 && tail.readUInt32LE(at) !== END_SIGNATURE) at--;
  if (at < 0) throw new Error('End of central directory record signature not found. Either not a zip file, or file is truncated.');
  const commentLength = tail.readUInt16LE(at + 20);
  if (commentLength !== tailLength - at - END_FIXED_SIZE) {
    throw new Error(`Invalid comment length. Expected: ${tailLength - at - END_FIXED_SIZE}. Found: ${commentLength}. Are there extra bytes at the end of the file?`);
  }
  let disk = tail.readUInt16LE(at + 4);
  let count = tail.readUInt16LE(at + 10);
  let offset = tail.readUInt32LE(at + 16);
  if (at >= ZIP64_LOCATOR_SIZE && tail.readUInt32LE(at - ZIP64_LOCATOR_SIZE) === ZIP64_LOCATOR_SIGNATURE) {
    const recordAt = u64(tail, at - ZIP64_LOCATOR_SIZE + 8);
    if (recordAt + ZIP64_END_SIZE > size) throw new Error('unexpected EOF');
    const record = await blocks.read(recordAt, ZIP64_END_SIZE);
    if (record.readUInt32LE(0) !== ZIP64_END_SIGNATURE) throw new Error('invalid zip64 end of central directory record signature');
    disk = record.readUInt32LE(16);
    count = u64(record, 32);
    offset = u64(record, 48);
  }
  if (disk !== 0) throw new Error(`multi-disk zip files are not supported: found disk number: ${disk}`);

  try {
    return { offset, entries: await readEntries(blocks, offset, count) };
  } catch (err) {
    throw new Error(`bad central directory: ${(err as Error).message}`, { cause: err });
  }
}

async function readEntries(blocks: BlockReader, offset: number, count: number): Promise<CentralEntry[]> {
  const size = blocks.size;
  const entries: CentralEntry[] = [];
  let window: Buffer = Buffer.alloc(0);
  let windowStart = offset;
  let cursor = offset;
  /** Whether `length` bytes at the cursor are in `window`: almost always, so the loop awaits nothing then. */
  const held = (length: number): boolean => cursor >= windowStart && cursor + length <= windowStart + window.length;
  /** Reads the window anew from the cursor, at least `length` bytes. */
  const refill = async (length: number): Promise<void> => {
    if (cursor + length > size) throw new Error('unexpected EOF');
    windowStart = cursor;
    window = await blocks.read(cursor, Math.min(size - cursor, Math.max(length, WINDOW - (cursor % WINDOW))));
  };
  for (let i = 0; i < count; i++) {
    if (!held(ENTRY_FIXED_SIZE)) await refill(ENTRY_FIXED_SIZE);
    const length = ENTRY_FIXED_SIZE + variableLength(window, cursor - windowStart);
    if (!held(length)) await refill(length);
    entries.push(parseEntry(window, cursor - windowStart));
    cursor += length;
  }
  return entries;
}

/**
 * The name, extra field and comment lengths of the entry whose fixed part is at `p`, after checking its
 * signature and that it is not strongly encrypted. (The loop above awaits; these small functions do the
 * work, so that V8 compiles each once instead of the whole loop again for every path it had not taken.)
 */
function variableLength(w: Buffer, p: number): number {
  const signature = w.readUInt32LE(p);
  if (signature !== ENTRY_SIGNATURE) throw new Error(`invalid central directory file header signature: 0x${signature.toString(16)}`);
  if (w.readUInt16LE(p + 8) & FLAG_STRONG_ENCRYPTION) throw new Error('strong encryption is not supported');
  return w.readUInt16LE(p + 28) + w.readUInt16LE(p + 30) + w.readUInt16LE(p + 32);
}

/** The entry whose central directory record (fixed part, name, extra field, comment) is whole in `w` at `p`. */
function parseEntry(w: Buffer, p: number): CentralEntry {
  const flags = w.readUInt16LE(p + 8);
  const entry: CentralEntry = {
    fileName: '',
    fileNameBytes: '',
    versionMadeBy: w.readUInt16LE(p + 4),
    generalPurposeBitFlag: flags,
    compressionMethod: w.readUInt16LE(p + 10),
    crc32: w.readUInt32LE(p + 16),
    compressedSize: w.readUInt32LE(p + 20),
    uncompressedSize: w.readUInt32LE(p + 24),
    externalFileAttributes: w.readUInt32LE(p + 38),
    relativeOffsetOfLocalHeader: w.readUInt32LE(p + 42),
  };
  const nameLength = w.readUInt16LE(p + 28);
  const extraLength = w.readUInt16LE(p + 30);
  const name = p + ENTRY_FIXED_SIZE;
  // A string, not a view of the window (a message would clone the view's whole buffer) or a buffer of
  // its own per entry (20,000 of them for torch, each an object the garbage collector tracks).
  entry.fileNameBytes = w.toString('latin1', name, name + nameLength);
  const extras = extraLength > 0 ? extraFields(w.subarray(name + nameLength, name + nameLength + extraLength)) : NO_EXTRAS;
  entry.fileName = decodeName(flags, w, name, nameLength, extras);
  if (extras !== NO_EXTRAS) {
    const zip64 = extras.find((e) => e.id === EXTRA_ZIP64);
    if (zip64) applyZip64(entry, zip64.data);
  }
  if (entry.compressionMethod === 0) checkStoredSize(entry, flags);
  return entry;
}

function checkStoredSize(entry: CentralEntry, flags: number): void {
  const expected = entry.uncompressedSize + (flags & FLAG_ENCRYPTED ? 12 : 0);
  if (entry.compressedSize !== expected) {
    throw new Error(`compressed/uncompressed size mismatch for stored file: ${entry.compressedSize} != ${entry.uncompressedSize}`);
  }
}

interface ExtraField {
  id: number;
  data: Buffer;
}
const NO_EXTRAS: ExtraField[] = [];

function extraFields(bytes: Buffer): ExtraField[] {
  const fields: ExtraField[] = [];
  for (let i = 0; i + 3 < bytes.length; ) {
    const id = bytes.readUInt16LE(i);
    const end = i + 4 + bytes.readUInt16LE(i + 2);
    if (end > bytes.length) throw new Error('extra field length exceeds extra field buffer size');
    fields.push({ id, data: Buffer.from(bytes.subarray(i + 4, end)) });
    i = end;
  }
  return fields;
}

/** Sizes and the offset that did not fit 32 bits are in the zip64 field, in this order, each only when marked. */
function applyZip64(entry: CentralEntry, data: Buffer): void {
  let at = 0;
  const next = (what: string): number => {
    if (at + 8 > data.length) throw new Error(`zip64 extended information extra field does not include ${what}`);
    const value = u64(data, at);
    at += 8;
    return value;
  };
  if (entry.uncompressedSize === ZIP64_MARKER) entry.uncompressedSize = next('uncompressed size');
  if (entry.compressedSize === ZIP64_MARKER) entry.compressedSize = next('compressed size');
  if (entry.relativeOffsetOfLocalHeader === ZIP64_MARKER) entry.relativeOffsetOfLocalHeader = next('relative header offset');
}

/**
 * UTF-8 when flagged, and plain printable ASCII as itself (every wheel's names, in practice); anything
 * else, or a name with a Unicode Path field, as yauzl decodes it.
 */
function decodeName(flags: number, window: Buffer, at: number, length: number, extras: ExtraField[]): string {
  if (!extras.some((e) => e.id === EXTRA_UNICODE_PATH)) {
    if (flags & FLAG_UTF8) return window.toString('utf8', at, at + length);
    let ascii = true;
    for (let i = at; i < at + length; i++) {
      const b = window[i]!;
      if (b < 0x20 || b > 0x7e) {
        ascii = false;
        break;
      }
    }
    if (ascii) return window.toString('latin1', at, at + length);
  }
  return yauzlNames().getFileNameLowLevel(flags, Buffer.from(window.subarray(at, at + length)), extras, true);
}

type NameDecoder = { getFileNameLowLevel(flags: number, name: Buffer, extras: ExtraField[], strict: boolean): string };
let yauzl: NameDecoder | null = null;
/** Loaded only for the rare name that needs it. */
function yauzlNames(): NameDecoder {
  yauzl ??= createRequire(import.meta.url)('yauzl') as NameDecoder;
  return yauzl;
}

/** An unsigned 64-bit little-endian number; zip sizes past 2^53 are refused as they are read. */
function u64(bytes: Buffer, at: number): number {
  const high = bytes.readUInt32LE(at + 4);
  if (high >= 2 ** 21) throw new Error('a 64-bit size or offset is larger than 2^53');
  return high * 2 ** 32 + bytes.readUInt32LE(at);
}
