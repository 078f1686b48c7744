/**
 * The unzip workers' program: a wheel entry's bytes read from the file, checked against its local
 * header, inflated and checked against RECORD (size and hash), on a worker thread. The main thread
 * only puts the bytes into the tar. See unzip-pool.ts for the protocol.
 */

import type { MessagePort } from 'node:worker_threads';
import type { RawZlib, rawZlib } from '../util/raw-zlib.js';

/** What the central directory says of an entry: what its local header must agree with. */
export interface CentralRecord {
  /** The name's bytes, one per character (latin1): compact, and cheap to copy into a message. */
  fileNameBytes: string;
  generalPurposeBitFlag: number;
  compressionMethod: number;
  crc32: number;
  compressedSize: number;
  uncompressedSize: number;
}

/** One entry to read: where it lies, what it must hold, and the names its errors give. */
export interface EntryRequest {
  /** The entry's name, for messages. */
  name: string;
  /** Byte offset of its local header. */
  offset: number;
  central: CentralRecord;
  /** RECORD's hash, or null when RECORD lists none (its size is still checked). */
  hash: { algorithm: string; hex: string } | null;
}

/** What the main thread asks of an unzip worker. */
export type UnzipMessage =
  /** Several small entries: their bytes come back in one buffer, one after the other. */
  | { type: 'batch'; id: number; file: string; entries: EntryRequest[]; capacity: number; buffer: ArrayBuffer | null }
  /**
   * One entry of any size, in chunks of `chunkSize`, at most `credits` of them not yet given back;
   * `buffers` (chunks used before) are filled first.
   */
  | { type: 'stream'; id: number; file: string; entry: EntryRequest; chunkSize: number; credits: number; buffers: ArrayBuffer[] }
  /** A chunk of the stream `id` given back: the worker may fill it again. */
  | { type: 'credit'; id: number; buffer: ArrayBuffer }
  /**
   * A whole uncompressed layer, written here: `frame` (a tar without the bodies of `entries`; see
   * tarFrame) with each entry's body in its gap (`gaps[i]`: where in `frame` body i goes), at byte `at`
   * of the file open as `fd` (the process's: the main thread keeps it open until the reply).
   */
  | { type: 'layer'; id: number; file: string; fd: number; at: number; frame: Uint8Array; gaps: number[]; entries: EntryRequest[] }
  /** The stream or layer `id` is no longer wanted. */
  | { type: 'cancel'; id: number };

/** What an unzip worker answers. */
export type UnzipReply =
  | { type: 'batch'; id: number; buffer: ArrayBuffer; lengths: number[] }
  | { type: 'chunk'; id: number; buffer: ArrayBuffer; length: number }
  /** The stream ended; the chunks it holds go back for the next one. */
  | { type: 'end'; id: number; buffers: ArrayBuffer[] }
  /** Bytes of a layer's wheel files written since the last report (as a progress display counts them). */
  | { type: 'progress'; id: number; bytes: number }
  /** A layer written: its tar's sha256 (its diffID and digest), and which entries' bodies are ELF files (they start so). */
  | { type: 'layer'; id: number; hex: string; elf: number[] }
  /**
   * A problem of the wheel, as one line naming file, entry and byte (`index`: which entry of a batch);
   * `code` and `syscall` when writing the layer's file failed (the message is then the system's).
   */
  | { type: 'failed'; id: number; index: number; message: string; userError: boolean; code?: string; syscall?: string };

/**
 * What a local header says differently from its central directory record, or null when they agree.
 * Self-contained (it runs in the workers too): a zip whose two views differ shows one file to the
 * tools that read local headers and another to those that read the directory, and Python's zipfile
 * refuses it.
 */
export function localHeaderDisagreement(header: Uint8Array, localName: Uint8Array, central: CentralRecord): string | null {
  /** Bit 0: encrypted. Bit 3: CRC and sizes follow the data (the local header holds zeros). */
  const FLAG_ENCRYPTED = 0x1;
  const FLAG_DATA_DESCRIPTOR = 0x8;
  /** A 32-bit size of all ones: the real one is in the zip64 extra field. */
  const ZIP64_MARKER = 0xffffffff;
  const view = new DataView(header.buffer, header.byteOffset, header.byteLength);
  const same = localName.length === central.fileNameBytes.length && Buffer.from(localName.buffer, localName.byteOffset, localName.byteLength).toString('latin1') === central.fileNameBytes;
  if (!same) {
    const text = (bytes: Uint8Array) => JSON.stringify(new TextDecoder().decode(bytes).slice(0, 200));
    return `it names ${text(localName)}, the directory ${text(Buffer.from(central.fileNameBytes, 'latin1'))}`;
  }
  const flags = view.getUint16(6, true);
  if ((flags & FLAG_ENCRYPTED) !== (central.generalPurposeBitFlag & FLAG_ENCRYPTED)) return 'one says the entry is encrypted, the other not';
  const method = view.getUint16(8, true);
  if (method !== central.compressionMethod) return `compression method ${method} here, ${central.compressionMethod} there`;
  if (flags & FLAG_DATA_DESCRIPTOR) return null;
  const crc = view.getUint32(14, true);
  if (crc !== central.crc32) return `CRC-32 0x${crc.toString(16)} here, 0x${central.crc32.toString(16)} there`;
  const compressed = view.getUint32(18, true);
  const size = view.getUint32(22, true);
  if (compressed !== ZIP64_MARKER && compressed !== central.compressedSize) return `compressed size ${compressed} here, ${central.compressedSize} there`;
  if (size !== ZIP64_MARKER && size !== central.uncompressedSize) return `size ${size} here, ${central.uncompressedSize} there`;
  return null;
}

/**
 * The unzip service's whole program, run once per connection on a worker thread (see util/threads.ts).
 * Like the hash service it runs as source text and uses nothing from outside its body but `require`,
 * Buffer and the functions it is given. Each file is opened per job
 * (the job's entries are read with positional reads). Errors of the wheel (a bad header, a failed
 * inflate, a size or hash that RECORD does not list) are answered as `failed` with the same one-line
 * message the main thread's reader gives.
 */
export function unzipWorkerMain(port: MessagePort, disagreement: typeof localHeaderDisagreement, inflaterOf: typeof rawZlib): void {
  const { createHash } = require('node:crypto') as typeof import('node:crypto');
  const fs = require('node:fs') as typeof import('node:fs');
  const zlib = require('node:zlib') as typeof import('node:zlib');
  const reply = (message: UnzipReply, transfer: ArrayBuffer[] = []) => port.postMessage(message, transfer);

  const LOCAL_HEADER_FIXED_SIZE = 30;
  const LOCAL_HEADER_SIGNATURE = 0x04034b50;
  /** Bytes read, inflated or written at a time. */
  const PIECE_SIZE = 1 << 20;
  /** An error that is the wheel's fault: its message is the user's. */
  class WheelError extends Error {}

  const readAt = (fd: number, into: Buffer, at: number): void => {
    let got = 0;
    while (got < into.length) {
      const n = fs.readSync(fd, into, got, into.length - got, at + got);
      if (n === 0) throw new WheelError(`unexpected end of file at byte ${at + got}`);
      got += n;
    }
  };

  /** Bytes of the file at a position: read for the asker, or served from a span read before. */
  type Source = (position: number, length: number) => Buffer;
  const direct =
    (fd: number): Source =>
    (position, length) => {
      const bytes = Buffer.allocUnsafe(length);
      readAt(fd, bytes, position);
      return bytes;
    };
  /** A batch's entries mostly lie side by side: one read of their span (into memory kept for the next batch) serves them all. */
  const SPAN_LIMIT = 4 << 20;
  let scratch = Buffer.alloc(0);
  const spanned = (fd: number, fileSize: number, entries: EntryRequest[]): Source => {
    const start = Math.min(...entries.map((e) => e.offset));
    // The local header's extra field is not in the directory: a little room for it.
    const end = Math.min(fileSize, Math.max(...entries.map((e) => e.offset + LOCAL_HEADER_FIXED_SIZE + e.central.fileNameBytes.length + 64 + e.central.compressedSize)));
    if (!(end > start) || end - start > SPAN_LIMIT) return direct(fd);
    if (scratch.length < end - start) scratch = Buffer.allocUnsafeSlow(Math.max(end - start, 1 << 20));
    const span = scratch.subarray(0, end - start);
    readAt(fd, span, start);
    const fallback = direct(fd);
    return (position, length) => (position >= start && position + length <= end ? span.subarray(position - start, position - start + length) : fallback(position, length));
  };

  /** Where the entry's data begins, after checking its local header (as ZipReader does). */
  const dataStart = (read: Source, fileSize: number, file: string, entry: EntryRequest): number => {
    const fail = (why: string) => new WheelError(`${file}: entry ${JSON.stringify(entry.name)} (local header at byte ${entry.offset}): ${why}`);
    if (entry.offset + LOCAL_HEADER_FIXED_SIZE > fileSize) throw fail('past the end of the file');
    const header = read(entry.offset, LOCAL_HEADER_FIXED_SIZE);
    if (header.readUInt32LE(0) !== LOCAL_HEADER_SIGNATURE) throw fail(`bad signature 0x${header.readUInt32LE(0).toString(16)}`);
    const nameLength = header.readUInt16LE(26);
    const start = entry.offset + LOCAL_HEADER_FIXED_SIZE + nameLength + header.readUInt16LE(28);
    if (entry.offset + LOCAL_HEADER_FIXED_SIZE + nameLength > fileSize) throw fail('its name runs past the end of the file');
    const localName = read(entry.offset + LOCAL_HEADER_FIXED_SIZE, nameLength);
    const why = disagreement(header, localName, entry.central);
    if (why) throw fail(`the local header disagrees with the central directory: ${why}`);
    const compressedSize = entry.central.compressedSize;
    if (start + compressedSize > fileSize) throw fail(`its ${compressedSize} bytes of data run past the end of the file (${fileSize} bytes)`);
    return start;
  };

  /** Checks the bytes as they come: never more than the directory's size, then the size and RECORD's hash. */
  const checker = (file: string, entry: EntryRequest) => {
    const size = entry.central.uncompressedSize;
    const hash = entry.hash ? createHash(entry.hash.algorithm) : null;
    let seen = 0;
    const holds = (actual: number) => new WheelError(`${file}: entry ${entry.name} holds ${actual} bytes, the zip directory says ${size}`);
    return {
      update(bytes: Uint8Array): void {
        seen += bytes.length;
        if (seen > size) throw holds(seen);
        hash?.update(bytes);
      },
      end(): void {
        if (seen !== size) throw holds(seen);
        if (!hash || !entry.hash) return;
        const actual = hash.digest();
        if (actual.toString('hex') === entry.hash.hex) return;
        const listed = (bytes: Buffer) => `${entry.hash!.algorithm}=${bytes.toString('base64url')}`;
        throw new WheelError(
          `${file}: entry ${entry.name} does not match RECORD: RECORD says ${listed(Buffer.from(entry.hash.hex, 'hex'))}, the entry has ${listed(actual)}`,
        );
      },
    };
  };

  /** An inflate failure as the main thread's reader words it. */
  const inflateError = (file: string, entry: EntryRequest, start: number, err: unknown): Error => {
    if (err instanceof WheelError) return err;
    const code = (err as NodeJS.ErrnoException).code;
    const message = code === 'ERR_BUFFER_TOO_LARGE' ? `inflates to more than its ${entry.central.uncompressedSize} bytes` : (err as Error).message;
    return new WheelError(`${file}: entry ${entry.name} (data at byte ${start}): ${message}`);
  };

  /** Inflaters reset after use, for the next entry (see rawZlib; one that failed is dropped: zlib closed it). */
  const spareInflaters: RawZlib[] = [];
  let inflaterMissing = false;
  const takeInflater = (): RawZlib | null => {
    const spare = spareInflaters.pop();
    if (spare || inflaterMissing) return spare ?? null;
    const made = inflaterOf(zlib, 'inflateRaw');
    inflaterMissing = made === null;
    return made;
  };
  const giveInflater = (inflater: RawZlib): void => {
    inflater.reset();
    spareInflaters.push(inflater);
  };

  /** Room for a small entry's bytes and one more (enough to see it inflate past its size); it grows to the largest. */
  let wholeOut = Buffer.allocUnsafeSlow(64 << 10);

  /** A small entry's bytes, whole: a view of memory used again by the next call, unless stored. */
  const readWhole = (read: Source, fileSize: number, file: string, entry: EntryRequest): Buffer => {
    const start = dataStart(read, fileSize, file, entry);
    const check = checker(file, entry);
    const compressed = read(start, entry.central.compressedSize);
    let bytes: Buffer;
    if (entry.central.compressionMethod === 0) {
      bytes = compressed;
    } else {
      const size = entry.central.uncompressedSize;
      const inflater = takeInflater();
      try {
        if (inflater) {
          if (wholeOut.length < size + 1) wholeOut = Buffer.allocUnsafeSlow(size + 1);
          const [, written] = inflater.step(compressed, wholeOut.subarray(0, size + 1), true);
          giveInflater(inflater);
          if (written > size) throw new WheelError(`${file}: entry ${entry.name} (data at byte ${start}): inflates to more than its ${size} bytes`);
          bytes = wholeOut.subarray(0, written);
        } else {
          // One byte over the stated size is enough to see the entry is too long.
          bytes = zlib.inflateRawSync(compressed, { maxOutputLength: size + 1, chunkSize: Math.max(64, size + 1) });
          collected(bytes.length);
        }
      } catch (err) {
        throw inflateError(file, entry, start, err);
      }
    }
    check.update(bytes);
    check.end();
    return bytes;
  };

  /**
   * Buffers made per piece (zlib's output where there is no raw inflater, a batch's or a stream's memory
   * when none came back) are garbage that V8 collects only once about 64 MiB of them pile up in this
   * thread's heap; they are young, and a minor collection every GC_EVERY bytes frees them for a
   * millisecond or so, which keeps the process's memory down.
   */
  const GC_EVERY = 16 << 20;
  let sinceGc = 0;
  let gc: ((options: { type: 'minor' }) => void) | null | undefined;
  const collected = (bytes: number) => {
    sinceGc += bytes;
    if (sinceGc < GC_EVERY) return;
    sinceGc = 0;
    if (gc === undefined) {
      try {
        require('node:v8').setFlagsFromString('--expose-gc');
        gc = require('node:vm').runInNewContext('gc') as (options: { type: 'minor' }) => void;
      } catch {
        gc = null;
      }
    }
    gc?.({ type: 'minor' });
  };
  const failed = (id: number, index: number, err: unknown) =>
    reply({ type: 'failed', id, index, message: err instanceof Error ? err.message : String(err), userError: err instanceof WheelError });

  const openWheel = (file: string): number => {
    try {
      return fs.openSync(file, 'r');
    } catch (err) {
      throw new WheelError(`${file}: cannot read it: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
  };

  const withFile = <T>(file: string, use: (fd: number, size: number) => T): T => {
    const fd = openWheel(file);
    try {
      return use(fd, fs.fstatSync(fd).size);
    } finally {
      fs.closeSync(fd);
    }
  };

  const batch = (id: number, file: string, entries: EntryRequest[], capacity: number, given: ArrayBuffer | null): void => {
    let index = 0;
    try {
      withFile(file, (fd, size) => {
        const total = entries.reduce((n, e) => n + e.central.uncompressedSize, 0);
        // Batches have one size, so their memory goes round between the threads instead of being made anew.
        const out = given && given.byteLength >= total ? Buffer.from(given) : Buffer.allocUnsafeSlow(Math.max(total, capacity));
        const lengths: number[] = [];
        const read = spanned(fd, size, entries);
        let at = 0;
        for (; index < entries.length; index++) {
          const bytes = readWhole(read, size, file, entries[index]!);
          bytes.copy(out, at);
          at += bytes.length;
          lengths.push(bytes.length);
        }
        reply({ type: 'batch', id, buffer: out.buffer as ArrayBuffer, lengths }, [out.buffer as ArrayBuffer]);
        collected(total);
      });
    } catch (err) {
      failed(id, index, err);
    }
  };

  /** An entry's `size` compressed bytes at `start`, a piece at a time, each of its own: a zlib stream may still hold the last. */
  const compressedPieces = function* (fd: number, start: number, size: number): Generator<Buffer> {
    for (let at = 0; at < size; ) {
      const piece = Buffer.allocUnsafe(Math.min(PIECE_SIZE, size - at));
      readAt(fd, piece, start + at);
      at += piece.length;
      yield piece;
    }
  };
  /** Those bytes inflated as they are read, one piece read ahead at most: a stream holds little besides its chunks. */
  const inflating = (fd: number, start: number, size: number): AsyncIterable<Buffer> & { destroy(): void } => {
    const { Readable } = require('node:stream') as typeof import('node:stream');
    return Readable.from(compressedPieces(fd, start, size), { highWaterMark: 1 }).pipe(zlib.createInflateRaw({ chunkSize: 256 << 10 }));
  };

  /** Pieces' buffers of bodies and layers done, for the next (reading and inflating large bodies, gathering a layer's writes). */
  const sparePieces: Buffer[] = [];
  const takePiece = (): Buffer => sparePieces.pop() ?? Buffer.allocUnsafeSlow(PIECE_SIZE);
  const givePiece = (buffer: Buffer): void => {
    if (sparePieces.length < 6) sparePieces.push(buffer);
  };

  /** A stored entry's `size` bytes at `start`, read a piece at a time into one buffer: views each good until the next is asked for. */
  const storedPieces = function* (fd: number, start: number, size: number): Generator<Buffer> {
    const input = takePiece();
    try {
      for (let done = 0; done < size; ) {
        const piece = input.subarray(0, Math.min(PIECE_SIZE, size - done));
        readAt(fd, piece, start + done);
        done += piece.length;
        yield piece;
      }
    } finally {
      givePiece(input);
    }
  };

  /**
   * A large entry's `size` compressed bytes at `start`, inflated as they are read: views of one buffer,
   * each good until the next is asked for. The entry has its own inflater and buffers (its reader
   * pauses between pieces, and another entry may run meanwhile). What follows the end of the deflate
   * stream is not read, as zlib's streams do; the size check sees what is missing.
   */
  const inflatedPieces = function* (inflater: RawZlib, fd: number, start: number, size: number): Generator<Buffer> {
    const input = takePiece();
    const out = takePiece();
    /** zlib failed: it closed the inflater. */
    let broken = false;
    try {
      let read = 0;
      let pending = input.subarray(0, 0);
      for (;;) {
        if (pending.length === 0 && read < size) {
          pending = input.subarray(0, Math.min(PIECE_SIZE, size - read));
          readAt(fd, pending, start + read);
          read += pending.length;
        }
        const last = read === size;
        broken = true;
        const [consumed, written] = inflater.step(pending, out, last);
        broken = false;
        pending = pending.subarray(consumed);
        if (written > 0) yield out.subarray(0, written);
        // Room left in `out` with input left (or none to come): the stream has ended.
        if (written < out.length && (last || pending.length > 0)) break;
      }
    } finally {
      givePiece(input);
      givePiece(out);
      if (!broken) giveInflater(inflater);
    }
  };
  /** inflatedPieces where Node has the inflater, else a zlib stream. */
  const inflated = async function* (fd: number, start: number, size: number): AsyncGenerator<Buffer> {
    const inflater = takeInflater();
    if (inflater) return yield* inflatedPieces(inflater, fd, start, size);
    const stream = inflating(fd, start, size);
    try {
      for await (const piece of stream) {
        yield piece;
        collected(piece.length);
      }
    } finally {
      stream.destroy();
    }
  };

  /** Streams in progress: buffers given back, and how to wake a stream waiting for one. */
  const streams = new Map<number, { free: Buffer[]; wake: (() => void) | null; cancelled: boolean }>();

  const stream = async (id: number, file: string, entry: EntryRequest, chunkSize: number, credits: number, given: ArrayBuffer[]): Promise<void> => {
    const free = given.filter((b) => b.byteLength === chunkSize).map((b) => Buffer.from(b));
    const state = { free, wake: null as (() => void) | null, cancelled: false };
    streams.set(id, state);
    let made = free.length;
    let chunk: Buffer | null = null;
    let used = 0;
    const take = async (): Promise<Buffer | null> => {
      while (!state.cancelled && state.free.length === 0 && made >= credits) await new Promise<void>((resolve) => (state.wake = resolve));
      if (state.cancelled) return null;
      const buffer = state.free.pop();
      if (buffer) return buffer;
      made++;
      return Buffer.allocUnsafeSlow(chunkSize);
    };
    const send = () => {
      const memory = chunk!.buffer as ArrayBuffer;
      reply({ type: 'chunk', id, buffer: memory, length: used }, [memory]);
      collected(used);
      chunk = null;
      used = 0;
    };
    /** Copies bytes into chunks, sending each full one; false once the stream is cancelled. */
    const put = async (bytes: Buffer): Promise<boolean> => {
      let offset = 0;
      while (offset < bytes.length) {
        if (!chunk) {
          chunk = await take();
          if (!chunk) return false;
        }
        const n = bytes.copy(chunk, used, offset);
        used += n;
        offset += n;
        if (used === chunk.length) send();
      }
      return true;
    };
    let fd: number | undefined;
    let start = 0;
    try {
      fd = fs.openSync(file, 'r');
      const fileSize = fs.fstatSync(fd).size;
      start = dataStart(direct(fd), fileSize, file, entry);
      const check = checker(file, entry);
      const compressedSize = entry.central.compressedSize;
      let open = true;
      if (entry.central.compressionMethod === 0) {
        for (const piece of storedPieces(fd, start, compressedSize)) {
          check.update(piece);
          if (!(open = await put(piece))) break;
        }
      } else {
        try {
          for await (const piece of inflated(fd, start, compressedSize)) {
            check.update(piece);
            if (!(open = await put(piece))) break;
          }
        } catch (err) {
          throw inflateError(file, entry, start, err);
        }
      }
      if (open) {
        check.end();
        if (chunk && used > 0) send();
      }
      const spare = state.free.map((b) => b.buffer as ArrayBuffer);
      state.free = [];
      reply({ type: 'end', id, buffers: spare }, spare);
    } catch (err) {
      failed(id, 0, err);
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
      streams.delete(id);
    }
  };

  const LAYER_YIELD_EVERY = 16 << 20;
  const LAYER_PROGRESS_EVERY = 32 << 20;
  /** An ELF file's first bytes (as a little-endian number). */
  const ELF_MAGIC = 0x464c457f;
  /** A failed write of the layer's file: the system's error, not the wheel's. */
  class OutputError extends Error {
    constructor(readonly failure: NodeJS.ErrnoException) {
      super(failure.message);
    }
  }
  /** A layer no longer wanted: it stops, and says so. */
  class Cancelled extends Error {}

  /**
   * One layer being written: its bytes gathered into whole writes at consecutive positions of the
   * file, hashed as they go. (Small functions over it, not one large one: V8 compiles them once each,
   * where one long function with a loop was compiled again for every path it had not yet taken.)
   */
  interface Writing {
    id: number;
    fd: number;
    position: number;
    out: Buffer;
    used: number;
    hash: import('node:crypto').Hash;
    sinceTurn: number;
    unreported: number;
    cancelled: boolean;
  }
  /** Layers being written, by id: a cancelled one stops at its next entry or chunk. */
  const layers = new Map<number, Writing>();

  const writeOut = (w: Writing, bytes: Buffer): void => {
    w.hash.update(bytes);
    try {
      for (let done = 0; done < bytes.length; ) done += fs.writeSync(w.fd, bytes, done, bytes.length - done, w.position + done);
    } catch (err) {
      throw new OutputError(err as NodeJS.ErrnoException);
    }
    w.position += bytes.length;
    w.sinceTurn += bytes.length;
  };
  const flush = (w: Writing): void => {
    if (w.used > 0) writeOut(w, w.out.subarray(0, w.used));
    w.used = 0;
  };
  /** Bytes of the tar, in order (a large piece is written as it is). */
  const put = (w: Writing, bytes: Uint8Array): void => {
    let offset = 0;
    while (offset < bytes.length) {
      if (w.used === 0 && bytes.length - offset >= PIECE_SIZE) {
        writeOut(w, Buffer.from(bytes.buffer, bytes.byteOffset + offset, bytes.length - offset));
        return;
      }
      const n = Math.min(PIECE_SIZE - w.used, bytes.length - offset);
      w.out.set(bytes.subarray(offset, offset + n), w.used);
      w.used += n;
      offset += n;
      if (w.used === PIECE_SIZE) flush(w);
    }
  };
  /** Lets the thread's other work in now and then, and tells the main thread how far the layer is. */
  const pause = async (w: Writing): Promise<void> => {
    if (w.cancelled) throw new Cancelled('cancelled');
    if (w.unreported >= LAYER_PROGRESS_EVERY) {
      reply({ type: 'progress', id: w.id, bytes: w.unreported });
      w.unreported = 0;
    }
    if (w.sinceTurn < LAYER_YIELD_EVERY) return;
    w.sinceTurn = 0;
    await new Promise<void>((resolve) => setImmediate(resolve));
  };
  const isElf = (first: Uint8Array): boolean => first.length >= 4 && (first[0]! | (first[1]! << 8) | (first[2]! << 16) | (first[3]! << 24)) === ELF_MAGIC;

  /** Positional reads of the wheel served from a window read ahead: a layer's small entries mostly lie side by side. */
  const WINDOW = 4 << 20;
  /** Windows of finished layers, for the next (a layer job is short; its memory goes round). */
  const spareWindows: Buffer[] = [];
  const windowed = (fd: number, fileSize: number, window: Buffer): Source => {
    let start = 0;
    let end = 0;
    const fallback = direct(fd);
    return (position, length) => {
      if (position >= start && position + length <= end) return window.subarray(position - start, position - start + length);
      if (length > WINDOW / 4) return fallback(position, length);
      start = position;
      end = Math.min(fileSize, position + WINDOW);
      if (end < position + length) return fallback(position, length);
      readAt(fd, window.subarray(0, end - start), start);
      return window.subarray(0, length);
    };
  };

  /** A small entry, read, inflated and checked whole; true when it is an ELF file. */
  const smallBody = (w: Writing, read: Source, zipSize: number, file: string, entry: EntryRequest): boolean => {
    const bytes = readWhole(read, zipSize, file, entry);
    put(w, bytes);
    w.unreported += bytes.length;
    return isElf(bytes);
  };

  /** A large entry, read in pieces, inflated as they come, checked and written on the way; true when it is an ELF file. */
  const largeBody = async (w: Writing, read: Source, zipFd: number, zipSize: number, file: string, entry: EntryRequest): Promise<boolean> => {
    const start = dataStart(read, zipSize, file, entry);
    const check = checker(file, entry);
    const compressedSize = entry.central.compressedSize;
    let first: boolean | null = null;
    const take = (piece: Buffer) => {
      first ??= isElf(piece);
      check.update(piece);
      put(w, piece);
      w.unreported += piece.length;
    };
    if (entry.central.compressionMethod === 0) {
      for (const piece of storedPieces(zipFd, start, compressedSize)) {
        take(piece);
        await pause(w);
      }
    } else {
      try {
        for await (const piece of inflated(zipFd, start, compressedSize)) {
          take(piece);
          await pause(w);
        }
      } catch (err) {
        if (err instanceof Cancelled || err instanceof OutputError) throw err;
        throw inflateError(file, entry, start, err);
      }
    }
    check.end();
    return first === true;
  };

  const layer = async (id: number, file: string, fd: number, at: number, frame: Uint8Array, gaps: number[], entries: EntryRequest[]): Promise<void> => {
    const w: Writing = { id, fd, position: at, out: takePiece(), used: 0, hash: createHash('sha256'), sinceTurn: 0, unreported: 0, cancelled: false };
    layers.set(id, w);
    const elf: number[] = [];
    let index = 0;
    let zipFd: number | undefined;
    let window: Buffer | null = null;
    try {
      zipFd = openWheel(file);
      const zipSize = fs.fstatSync(zipFd).size;
      window = spareWindows.pop() ?? Buffer.allocUnsafeSlow(WINDOW);
      const read = windowed(zipFd, zipSize, window);
      let from = 0;
      for (; index < entries.length; index++) {
        const entry = entries[index]!;
        const gap = gaps[index]!;
        put(w, frame.subarray(from, gap));
        from = gap;
        const elfFile = entry.central.uncompressedSize <= PIECE_SIZE ? smallBody(w, read, zipSize, file, entry) : await largeBody(w, read, zipFd, zipSize, file, entry);
        if (elfFile) elf.push(index);
        await pause(w);
      }
      put(w, frame.subarray(from));
      flush(w);
      if (w.unreported > 0) reply({ type: 'progress', id, bytes: w.unreported });
      reply({ type: 'layer', id, hex: w.hash.digest('hex'), elf });
    } catch (err) {
      layerFailed(id, index, err);
    } finally {
      if (zipFd !== undefined) fs.closeSync(zipFd);
      layers.delete(id);
      givePiece(w.out);
      if (window && spareWindows.length < 2) spareWindows.push(window);
    }
  };

  const layerFailed = (id: number, index: number, err: unknown): void => {
    if (err instanceof OutputError) {
      const cause = err.failure;
      reply({ type: 'failed', id, index, message: cause.message, userError: false, code: cause.code, syscall: cause.syscall });
    } else if (err instanceof Cancelled) {
      reply({ type: 'failed', id, index, message: 'cancelled', userError: false });
    } else failed(id, index, err);
  };

  port.on('message', (message: UnzipMessage) => {
    switch (message.type) {
      case 'batch':
        return batch(message.id, message.file, message.entries, message.capacity, message.buffer);
      case 'stream':
        void stream(message.id, message.file, message.entry, message.chunkSize, message.credits, message.buffers);
        return;
      case 'layer':
        void layer(message.id, message.file, message.fd, message.at, message.frame, message.gaps, message.entries);
        return;
      case 'credit':
      case 'cancel': {
        const writing = layers.get(message.id);
        if (writing && message.type === 'cancel') writing.cancelled = true;
        const state = streams.get(message.id);
        if (!state) return;
        if (message.type === 'credit') state.free.push(Buffer.from(message.buffer));
        else state.cancelled = true;
        const wake = state.wake;
        state.wake = null;
        wake?.();
        return;
      }
    }
  });
}
