import { createHash, randomBytes, type Hash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { once } from 'node:events';
import { rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import zlib from 'node:zlib';
import { TarWriter, type ChunkSink } from '../tar/writer.js';
import { deflateOptions, GzipMembers, GZIP_MEMBER_HEADER } from './gzip.js';
import type { LayerFile, LayerSource } from './types.js';
import { removeOnExit } from '../util/cleanup.js';
import { UserError } from '../util/errors.js';
import type { LayerSettings } from '../cache/keys.js';

/**
 * Tar segments: a run of tar entries without the end-of-archive blocks, so segments concatenate into
 * one archive. Each is stored compressed as whole gzip members; gzip members concatenate into one
 * valid gzip stream (RFC 1952 §2.2), so a layer is composed from members without compressing again.
 *
 * Members are the layer writer's (src/layer/gzip.ts): a fixed 10-byte header with no name,
 * mtime 0, XFL 0, OS 3, raw deflate with zlib's defaults, CRC32 and ISIZE.
 */
const CHUNK_SIZE = 1 << 20;
/** Chunks in flight per segment: bounds memory to a few MiB whatever the segment's size. */
const CHUNKS_IN_FLIGHT = 4;
const BLOCK = 512;

/** The two zero blocks that end every tar archive. */
export const END_OF_ARCHIVE = Buffer.alloc(2 * BLOCK);

/** A whole gzip member of small in-memory bytes (the layer's first and last few blocks). */
export function gzipMemberSync(bytes: Buffer, level: number): Buffer {
  const trailer = Buffer.alloc(8);
  trailer.writeUInt32LE(zlib.crc32(bytes) >>> 0, 0);
  trailer.writeUInt32LE(bytes.length % 0x100000000, 4);
  return Buffer.concat([GZIP_MEMBER_HEADER, zlib.deflateRawSync(bytes, deflateOptions(level)), trailer]);
}

/** The stored form of a small segment: a gzip member, or the bytes themselves. */
export function storedFormSync(bytes: Buffer, settings: LayerSettings): Buffer {
  return settings.compression === 'gzip' ? gzipMemberSync(bytes, settings.gzipLevel) : bytes;
}

/**
 * Runs a layer source through the tar writer and hands each piece of the segment (end blocks cut off)
 * to `consume`, in order. `consume` may keep the buffer until it calls `release`.
 */
export async function tarSegment(
  source: LayerSource,
  mtime: number,
  consume: (bytes: Buffer, release: () => void) => void,
  /** Keep the end-of-archive blocks: the segment is then a whole tar. */
  whole = false,
): Promise<number> {
  const sink = new SegmentSink(consume);
  const tar = new TarWriter(sink, { mtime });
  await source(tar);
  if (!whole) sink.limit = tar.bytesWritten;
  await tar.finish();
  await sink.drained();
  return whole ? tar.bytesWritten : sink.limit;
}

/** Small segments (a few headers) as one buffer. */
export async function tarSegmentBytes(source: LayerSource, mtime: number): Promise<Buffer> {
  const pieces: Buffer[] = [];
  await tarSegment(source, mtime, (bytes, release) => {
    pieces.push(Buffer.from(bytes));
    release();
  });
  return Buffer.concat(pieces);
}

/** Hands out a few reusable chunks to the tar writer; drops whatever lies past `limit` (the end blocks). */
class SegmentSink implements ChunkSink {
  limit = Number.POSITIVE_INFINITY;
  #offset = 0;
  #allocated = 0;
  #free: Buffer[] = [];
  #waiters: ((b: Buffer) => void)[] = [];
  #idle: (() => void)[] = [];

  constructor(private readonly consume: (bytes: Buffer, release: () => void) => void) {}

  acquire(): Buffer | Promise<Buffer> {
    const chunk = this.#free.pop();
    if (chunk) return chunk;
    if (this.#allocated < CHUNKS_IN_FLIGHT) {
      this.#allocated++;
      return Buffer.allocUnsafe(CHUNK_SIZE);
    }
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  submit(chunk: Buffer, length: number): void {
    const kept = Math.max(0, Math.min(length, this.limit - this.#offset));
    this.#offset += length;
    if (kept === 0) return this.#release(chunk);
    let released = false;
    this.consume(chunk.subarray(0, kept), () => {
      if (!released) {
        released = true;
        this.#release(chunk);
      }
    });
  }

  /** Resolves once every chunk came back, i.e. everything submitted was consumed. */
  drained(): Promise<void> {
    if (this.#free.length === this.#allocated) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  #release(chunk: Buffer): void {
    const waiter = this.#waiters.shift();
    if (waiter) return waiter(chunk);
    this.#free.push(chunk);
    if (this.#free.length === this.#allocated) for (const done of this.#idle.splice(0)) done();
  }
}

export interface WrittenSegment {
  /** sha256 of the whole file: `frame.before`, the segment's stored bytes (gzip members, or raw tar), `frame.after`. */
  digest: string;
  /** Bytes of the segment's stored form, which starts at byte `frame.before.length` of the file. */
  size: number;
  /** Bytes of tar in the segment. */
  tarSize: number;
}

export interface WriteSegmentOptions {
  /** Also fed every byte of the tar (a layer's diffID). */
  alsoHash?: Hash | null;
  /** Stored bytes written around the segment, so that the file is a whole layer blob by itself. */
  frame?: { before: Buffer; after: Buffer };
  /** Called once the whole tar went through `alsoHash` and into the compressor, before compression ends. */
  onTarred?: () => void;
  /** Keep the end-of-archive blocks (a whole layer rather than a part of one). */
  whole?: boolean;
}

const NO_FRAME = { before: Buffer.alloc(0), after: Buffer.alloc(0) };

/**
 * Writes a source's tar segment to `file` in its stored form, between `frame.before` and `frame.after`, in
 * one pass: each tar chunk goes to `alsoHash` (a layer's diffID) and to the layer writer's parallel gzip
 * (GzipMembers: a member per 4 MiB of tar, deflated on the thread pool within `--jobs` turns, so one huge
 * store path uses every core), whose members are hashed and written in order. Memory stays at a few
 * chunks and members.
 */
export async function writeSegment(
  source: LayerSource,
  settings: LayerSettings,
  file: string,
  { alsoHash = null, frame = NO_FRAME, onTarred, whole = false }: WriteSegmentOptions = {},
): Promise<WrittenSegment> {
  const forget = removeOnExit(file);
  const out = createWriteStream(file, { flags: 'wx', mode: 0o644, highWaterMark: 1 << 20 });
  const storedHash = createHash('sha256');
  let size = 0;
  let failure: Error | null = null;
  out.on('error', (err) => (failure ??= err));
  const emit = (bytes: Buffer, written?: () => void) => {
    storedHash.update(bytes);
    size += bytes.length;
    out.write(bytes, written && (() => written()));
  };
  // Compressed members wait for the disk: a slow disk must not let them pile up in memory.
  const roomOnDisk = async () => {
    if (out.writableNeedDrain && !failure) await once(out, 'drain');
  };
  const members = settings.compression === 'gzip' ? new GzipMembers(settings.gzipLevel, (member) => emit(member)) : null;
  emit(frame.before);

  try {
    const tarSize = await tarSegment(source, settings.mtime, (bytes, release) => {
      if (failure) throw failure;
      alsoHash?.update(bytes);
      // The chunk goes back to the tar writer once its bytes are taken (copied, or on disk).
      if (!members) return emit(bytes, release);
      members.write(bytes).then(roomOnDisk).then(release, (err: Error) => {
        failure ??= err;
        release();
      });
    }, whole);
    await members?.flush();
    onTarred?.();
    await members?.end();
    emit(frame.after);
    await new Promise<void>((resolve, reject) => {
      out.once('error', reject);
      out.end(resolve);
    });
    if (failure) throw failure;
    return { digest: `sha256:${storedHash.digest('hex')}`, size: size - frame.before.length - frame.after.length, tarSize };
  } catch (err) {
    if (!out.closed) await new Promise<void>((closed) => out.destroy().once('close', () => closed()));
    await rm(file, { force: true });
    const e = err as NodeJS.ErrnoException;
    if (e.code && !(err instanceof UserError)) throw new UserError(`cannot write cache file ${file}: ${e.code}`, { cause: err });
    throw err;
  } finally {
    forget();
  }
}

/**
 * Writes a whole layer to `<dir>/<digest hex>` on this thread's side, with the same bytes as writeLayer
 * (the same 4 MiB members): tar → sha256 (diffID) → parallel gzip → sha256 (digest) → file. Used for the
 * layers a build writes whole (wheels, the image root): no worker thread to start, and no second
 * JavaScript heap whose garbage (deflate outputs) would add to the peak memory.
 */
export async function writeWholeLayer(source: LayerSource, settings: LayerSettings, dir: string): Promise<LayerFile> {
  const temp = join(dir, `.whole-${process.pid}-${randomBytes(6).toString('hex')}.tmp`);
  // Uncompressed, the blob is the tar: its digest is its diffID, hashed once.
  const diff = settings.compression === 'none' ? null : createHash('sha256');
  const written = await writeSegment(source, settings, temp, { alsoHash: diff, whole: true });
  const file = join(dir, written.digest.slice('sha256:'.length));
  await rename(temp, file).catch(async (err: unknown) => {
    await rm(temp, { force: true });
    throw err;
  });
  return {
    file,
    pieces: [{ file, start: 0, length: written.size }],
    digest: written.digest,
    size: written.size,
    diffId: diff ? `sha256:${diff.digest('hex')}` : written.digest,
    uncompressedSize: written.tarSize,
    compression: settings.compression,
  };
}
