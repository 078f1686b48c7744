import { createHash, randomBytes, type Hash } from 'node:crypto';
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { TarWriter, type ChunkSink } from '../tar/writer.js';
import { removeOnExit } from '../util/cleanup.js';
import { UserError } from '../util/errors.js';
import { describeOsError } from '../util/os-errors.js';
import type { BytePiece } from '../util/pieces.js';
import { codecOf, Turns, type Codec } from './codec.js';
import type { Frame } from './types.js';
import { StreamHash, travellingBuffer } from '../util/hash-stream.js';
import { Spares } from '../util/spares.js';
import { checkLayerFormat, FRAME_SIZE, type LayerFormat } from './format.js';
import type { LayerSource } from './types.js';

/**
 * The layer writer: a source's entries → deterministic tar → sha256 (diffID) → compression in parallel
 * frames → sha256 (digest) → bytes at their final place, in one pass. Every layer nix2oci makes goes
 * through here, whatever its kind (store paths, wheels, image root) and wherever it goes (a cache
 * blob file, a region of an archive being written, a layout's blob file, a work file). Nothing is
 * tarred or compressed twice and no layer is held in memory: a few MiB of chunks and frames at most.
 */

/** Where a layer's bytes go: from byte `at` of an open file on, in order. */
export interface LayerOutput {
  handle: FileHandle;
  at: number;
  /** For error messages. */
  path: string;
}

export interface WriteOptions {
  /** Compression turns shared by every layer of the build (`--jobs`); default: this layer's own 4. */
  turns?: Turns;
  /**
   * Keep the tar's end-of-archive blocks (default true). A segment without them is a run of entries
   * that concatenates with others into one tar: the cache keeps a store path's part that way.
   */
  whole?: boolean;
  /** Stored bytes written around the segment (a cached part's layer head and end), hashed with it. */
  around?: { before: Buffer; after: Buffer };
  /** Also fed every byte of tar, in order: a composed layer's diffID across its parts. */
  alsoHash?: Hash;
  /** Called once the whole tar went into the compressor, before compression ends (the next can start tarring). */
  onTarred?: () => void;
}

/** What was written. */
export interface Written {
  /** `sha256:<hex>` of everything written: the bytes around the segment and its stored bytes. */
  digest: string;
  /** Bytes of the segment's stored form (without the bytes around it). */
  size: number;
  /** `sha256:<hex>` of a whole layer's tar (its diffID); uncompressed, the same as `digest`. Empty for a segment. */
  diffId: string;
  /** Bytes of tar in the segment. */
  tarSize: number;
}

/** Tar chunks in flight: bounds memory to a few MiB whatever the layer's size. */
const CHUNK_SIZE = 1 << 20;
const CHUNKS_IN_FLIGHT = 4;
/**
 * Frames of one layer being compressed at most (each holds a FRAME_SIZE buffer of tar until compressed).
 * With `--jobs` 2 only two compress at once: a third keeps the turns busy. A fourth per layer gained
 * the ML stack's gzip build about 5 % and cost it about 10 MiB at the peak (docs/benchmarks.md).
 */
const FRAMES_IN_FLIGHT = 3;
/** Tar chunks kept for the next layers. */
const CHUNKS = new Spares(CHUNK_SIZE, 2 * CHUNKS_IN_FLIGHT, travellingBuffer);
/** Bytes queued for the disk before the writer waits: a slow disk must not let them pile up. */
const WRITE_BACKLOG = 8 << 20;

export async function writeLayer(source: LayerSource, format: LayerFormat, out: LayerOutput, options: WriteOptions = {}): Promise<Written> {
  const { whole = true, around, alsoHash, onTarred } = options;
  const session = new Session(format, out, options.turns);
  try {
    // A whole layer's diffID: uncompressed, its blob is its tar, hashed once. A segment has none of its own.
    const tarHash = whole && session.codec ? createHash('sha256') : null;
    if (around) session.stored(around.before);
    const tarSize = await session.segment(source, whole, [tarHash, alsoHash], onTarred);
    if (around) session.stored(around.after);
    const { digest, size } = await session.end();
    const diffId = tarHash ? `sha256:${tarHash.digest('hex')}` : whole ? digest : '';
    return { digest, size: size - (around ? around.before.length + around.after.length : 0), diffId, tarSize };
  } catch (err) {
    await session.abandon();
    throw asUserError(err, out.path);
  }
}

/**
 * A layer composed of segments, framed the way the layer cache keeps store paths: the head's stored
 * bytes (its own frame), each segment compressed into frames of its own (frames restart at every
 * segment), the end's stored bytes. The same bytes as the cache's composition of the same segments,
 * written in one pass straight to `out`.
 */
export async function writeComposedLayer(
  head: { tar: Buffer; stored: Buffer },
  segments: LayerSource[],
  end: { tar: Buffer; stored: Buffer },
  format: LayerFormat,
  out: LayerOutput,
  turns?: Turns,
): Promise<Written> {
  const session = new Session(format, out, turns);
  try {
    // Uncompressed, the stored bytes are the tar: hashed once, the digest is the diffID.
    const diff = session.codec ? createHash('sha256').update(head.tar) : null;
    session.stored(head.stored);
    let tarSize = head.tar.length;
    for (const segment of segments) tarSize += await session.segment(segment, false, [diff]);
    diff?.update(end.tar);
    session.stored(end.stored);
    const { digest, size } = await session.end();
    return { digest, size, diffId: diff ? `sha256:${diff.digest('hex')}` : digest, tarSize: tarSize + end.tar.length };
  } catch (err) {
    await session.abandon();
    throw asUserError(err, out.path);
  }
}

/**
 * One layer being written: its stored bytes hashed and written in order, segment after segment.
 * Uncompressed, the stored bytes are the whole tar: they are hashed on another core (a StreamHash),
 * each chunk once it is written, so the main thread only tars.
 */
class Session {
  readonly codec: Codec | null;
  readonly #file: FileSink;
  readonly #hash = createHash('sha256');
  readonly #stream: StreamHash | null;
  readonly #turns: Turns;

  constructor(
    readonly format: LayerFormat,
    out: LayerOutput,
    turns: Turns | undefined,
  ) {
    checkLayerFormat(format);
    this.codec = codecOf(format);
    this.#file = new FileSink(out);
    this.#turns = turns ?? new Turns(FRAMES_IN_FLIGHT);
    this.#stream = this.codec ? null : StreamHash.take();
  }

  /** Stored bytes as they are (a frame made elsewhere); `done` once they are in the file and hashed. */
  stored(bytes: Buffer, done?: (returned?: Buffer | null) => void): void {
    const stream = this.#stream;
    if (!stream) {
      this.#hash.update(bytes);
      return this.#file.write(bytes, done);
    }
    this.#file.write(bytes, () => stream.update(bytes, (returned) => done?.(returned)));
  }

  /** A frame's bytes as they are; its memory goes back once they are in the file. */
  #storedFrame(frame: Frame): void {
    const last = frame.bytes.length - 1;
    if (last < 0) return frame.release();
    frame.bytes.forEach((bytes, i) => this.stored(bytes, i === last ? () => frame.release() : undefined));
  }

  /** Tars a source into the layer, through `hashes` (the diffID's) and the compression; returns its tar bytes. */
  async segment(source: LayerSource, whole: boolean, hashes: (Hash | null | undefined)[], onTarred?: () => void): Promise<number> {
    const file = this.#file;
    const frames = this.codec ? new Frames(this.codec, this.#turns, (frame) => this.#storedFrame(frame)) : null;
    try {
      const tarSize = await tarInto(
        source,
        this.format.mtime,
        whole,
        (bytes, release) => {
          for (const hash of hashes) hash?.update(bytes);
          if (!frames) return this.stored(bytes, release);
          // The chunk goes back to the tar writer once copied for compression; frames wait for the disk.
          frames.write(bytes).then(() => file.room()).then(() => release(), (err: unknown) => {
            file.fail(err);
            release();
          });
        },
        () => file.failure(),
      );
      await frames?.flush();
      onTarred?.();
      await frames?.end();
      return tarSize;
    } catch (err) {
      // The build's parts are few: one left half-filled would be missed by every layer after.
      frames?.drop();
      throw err;
    }
  }

  /** Waits for every write; the digest and size of all stored bytes. */
  async end(): Promise<{ digest: string; size: number }> {
    await this.#file.end();
    const digest = this.#stream ? await this.#stream.digest() : `sha256:${this.#hash.digest('hex')}`;
    return { digest, size: this.#file.written };
  }

  /** After a failure: lets the writes in flight settle (the caller removes or reuses the file). */
  async abandon(): Promise<void> {
    await this.#file.end().catch(() => undefined);
    await this.#stream?.digest().catch(() => undefined);
  }
}

/** A layer written whole to its own file, named by its digest in `dir`. */
export interface LayerFile extends Written {
  file: string;
  pieces: BytePiece[];
}

/** Writes a whole layer to `<dir>/<digest hex>` (see writeBlobFile). */
export function writeLayerFile(source: LayerSource, format: LayerFormat, dir: string, options: Omit<WriteOptions, 'whole' | 'around'> = {}): Promise<LayerFile> {
  return writeBlobFile(dir, (out) => writeLayer(source, format, out, options));
}

/**
 * Runs `write` into a temp file in `dir` and renames the file to its digest's hex once complete
 * (removed on failure or interruption): a layer with a file of its own (a work file, a cache blob, a
 * layout's blob).
 */
export async function writeBlobFile(dir: string, write: (out: LayerOutput) => Promise<Written>, label = dir): Promise<LayerFile> {
  const temp = join(dir, `.layer-${process.pid}-${randomBytes(6).toString('hex')}.tmp`);
  const forget = removeOnExit(temp);
  try {
    // Readable too: a layer's ELF files are read back from where they were just written.
    const handle = await open(temp, 'wx+', 0o644).catch((err: NodeJS.ErrnoException) => {
      throw new UserError(`cannot write a layer in ${label}: ${describeOsError(err)}`, { cause: err });
    });
    let written: Written;
    try {
      written = await write({ handle, at: 0, path: label });
    } finally {
      await handle.close();
    }
    const file = join(dir, written.digest.slice('sha256:'.length));
    await rename(temp, file);
    return { ...written, file, pieces: [{ file, start: 0, length: written.size }] };
  } catch (err) {
    await rm(temp, { force: true });
    throw asUserError(err, label);
  } finally {
    forget();
  }
}

/**
 * A failed write of `path` as the user's error, in one line with the system's reason (a full disk, a
 * read-only directory are the user's to fix); any other error as it is.
 */
export function asUserError(err: unknown, path: string): unknown {
  const e = err as NodeJS.ErrnoException;
  if (e?.code && !(err instanceof UserError) && typeof e.syscall === 'string') return new UserError(`cannot write ${path}: ${describeOsError(err)}`, { cause: err });
  return err;
}

/**
 * The tar of a source as a segment (without the end-of-archive blocks), chunk by chunk to `consume`,
 * which must be done with each chunk when it returns. For hashing a segment again without writing it.
 */
export function tarSegment(source: LayerSource, mtime: number, consume: (bytes: Buffer) => void): Promise<number> {
  return tarInto(source, mtime, false, (bytes, release) => {
    consume(bytes);
    release();
  }, () => null);
}

/** A small segment (a few headers) as one buffer. */
export async function tarSegmentBytes(source: LayerSource, mtime: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  await tarSegment(source, mtime, (bytes) => chunks.push(Buffer.from(bytes)));
  return Buffer.concat(chunks);
}

/**
 * Runs a source through the tar writer and hands each chunk of tar to `consume` in order (without the
 * end-of-archive blocks unless `whole`). `consume` may keep the chunk until it calls `release`.
 * Returns the bytes of tar handed over.
 */
async function tarInto(
  source: LayerSource,
  mtime: number,
  whole: boolean,
  consume: (bytes: Buffer, release: (returned?: Buffer | null) => void) => void,
  failure: () => unknown,
): Promise<number> {
  const sink = new Chunks(consume, failure);
  const tar = new TarWriter(sink, { mtime });
  await source(tar);
  if (!whole) sink.limit = tar.bytesWritten;
  await tar.finish();
  await sink.drained();
  const failed = failure();
  if (failed) throw failed;
  return whole ? tar.bytesWritten : sink.limit;
}

/** Hands out a few reusable chunks to the tar writer; drops whatever lies past `limit` (the end blocks). */
class Chunks implements ChunkSink {
  limit = Number.POSITIVE_INFINITY;
  #offset = 0;
  #allocated = 0;
  #free: Buffer[] = [];
  #waiters: ((b: Buffer) => void)[] = [];
  #idle: (() => void)[] = [];

  constructor(
    private readonly consume: (bytes: Buffer, release: (returned?: Buffer | null) => void) => void,
    private readonly failure: () => unknown,
  ) {}

  acquire(): Buffer | Promise<Buffer> {
    const failed = this.failure();
    if (failed) throw failed;
    const chunk = this.#free.pop();
    if (chunk) return chunk;
    if (this.#allocated < CHUNKS_IN_FLIGHT) {
      this.#allocated++;
      return CHUNKS.take();
    }
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  submit(chunk: Buffer, length: number): void {
    const kept = Math.max(0, Math.min(length, this.limit - this.#offset));
    this.#offset += length;
    if (kept === 0) return this.#release(chunk);
    let released = false;
    this.consume(chunk.subarray(0, kept), (returned) => {
      if (!released) {
        released = true;
        // A chunk that travelled to a hash worker comes back as a new buffer over the same memory.
        this.#release(returned ?? (chunk.length > 0 ? chunk : CHUNKS.take()));
      }
    });
  }

  /** Resolves once every chunk came back, i.e. everything submitted was consumed; they go to the next layer's sink. */
  async drained(): Promise<void> {
    if (this.#free.length !== this.#allocated) await new Promise<void>((resolve) => this.#idle.push(resolve));
    for (const chunk of this.#free.splice(0)) CHUNKS.give(chunk);
    this.#allocated = 0;
  }

  #release(chunk: Buffer): void {
    const waiter = this.#waiters.shift();
    if (waiter) return waiter(chunk);
    this.#free.push(chunk);
    if (this.#free.length === this.#allocated) for (const done of this.#idle.splice(0)) done();
  }
}

/**
 * Cuts the tar every FRAME_SIZE bytes, compresses each cut alone into a frame with a turn (so `--jobs`
 * bounds every layer's compression together, and one huge layer still uses every core), and emits the
 * frames in order.
 */
class Frames {
  #part: Buffer | null = null;
  #used = 0;
  #queue: Promise<void> = Promise.resolve();
  #next = 0;
  #nextEmit = 0;
  #done = new Map<number, Frame>();
  #inFlight = 0;
  #roomWaiters: (() => void)[] = [];
  #failure: unknown = null;
  #idle: (() => void)[] = [];

  constructor(
    private readonly codec: Codec,
    private readonly turns: Turns,
    private readonly emit: (frame: Frame) => void,
  ) {}

  /**
   * Takes the bytes (copied); resolves once there is room for more. Calls may overlap (the tar writer
   * hands over its next chunk before this one resolves): they are queued and copied in call order, so
   * parts fill in tar order and only one part at a time waits for a turn.
   */
  write(bytes: Buffer): Promise<void> {
    const done = this.#queue.then(() => this.#write(bytes));
    this.#queue = done.catch(() => undefined);
    return done;
  }

  async #write(bytes: Buffer): Promise<void> {
    let offset = 0;
    while (offset < bytes.length) {
      if (this.#failure) throw this.#failure;
      if (!this.#part) {
        const part = this.turns.part();
        this.#part = part instanceof Promise ? await part : part;
      }
      const copied = bytes.copy(this.#part, this.#used, offset);
      this.#used += copied;
      offset += copied;
      if (this.#used === FRAME_SIZE) await this.#dispatch();
    }
  }

  /** Sends what is left to be compressed (an empty tar still gets one frame); resolves once under way. */
  async flush(): Promise<void> {
    await this.#queue;
    if (this.#used > 0 || this.#next === 0) await this.#dispatch();
  }

  /** Resolves once every frame has been emitted. */
  async end(): Promise<void> {
    await this.flush();
    if (this.#inFlight > 0) await new Promise<void>((resolve) => this.#idle.push(resolve));
    if (this.#failure) throw this.#failure;
  }

  /** After a failure of the source: the part being filled goes back (those in flight go back as they end). */
  drop(): void {
    void this.#queue.then(() => {
      if (this.#part) this.turns.givePart(this.#part);
      this.#part = null;
      this.#used = 0;
    });
  }

  async #dispatch(): Promise<void> {
    const taken = this.#part !== null;
    const part = this.#part ?? Buffer.alloc(0);
    const length = this.#used;
    this.#part = null;
    this.#used = 0;
    // Numbered as it is cut, before any wait: frames come out in tar order whoever waits longest.
    const seq = this.#next++;
    while (this.#inFlight >= FRAMES_IN_FLIGHT) await new Promise<void>((resolve) => this.#roomWaiters.push(resolve));
    this.#inFlight++;
    const turn = this.turns.take();
    if (turn) await turn;
    if (this.#failure) {
      this.turns.give();
      this.#finished(seq, { bytes: [], part: taken ? part : null, release: () => {} }, false, taken);
      throw this.#failure;
    }
    // The part's memory is the codec's until the frame brings it back.
    this.codec.frame(part, length).then(
      (frame) => this.#finished(seq, frame, true, taken),
      (err: unknown) => {
        this.#failure ??= err;
        this.#finished(seq, { bytes: [], part: null, release: () => {} }, true, taken);
      },
    );
  }

  #finished(seq: number, frame: Frame, turned: boolean, taken: boolean): void {
    if (turned) this.turns.give();
    if (taken) this.turns.givePart(frame.part);
    this.#done.set(seq, frame);
    // In order; a part counts as in flight until its frame is emitted, so frames waiting behind a slow
    // earlier part stay bounded too.
    for (let frame = this.#done.get(this.#nextEmit); frame; frame = this.#done.get(this.#nextEmit)) {
      this.#done.delete(this.#nextEmit++);
      try {
        if (!this.#failure) this.emit(frame);
      } catch (err) {
        this.#failure ??= err;
      }
      this.#inFlight--;
      this.#roomWaiters.shift()?.();
    }
    if (this.#inFlight === 0) for (const done of this.#idle.splice(0)) done();
  }
}

/** Writes in order at consecutive positions of an open file, one write at a time, with a bounded backlog. */
class FileSink {
  #position: number;
  #queued = 0;
  #chain: Promise<void> = Promise.resolve();
  #failure: unknown = null;
  #roomWaiters: (() => void)[] = [];

  constructor(private readonly out: LayerOutput) {
    this.#position = out.at;
  }

  /** Bytes handed to write so far. */
  get written(): number {
    return this.#position - this.out.at;
  }

  failure(): unknown {
    return this.#failure;
  }

  fail(err: unknown): void {
    this.#failure ??= err;
    for (const wake of this.#roomWaiters.splice(0)) wake();
  }

  /** Queues the bytes (which must not change until `done` runs, once they are in the file). */
  write(bytes: Buffer, done?: () => void): void {
    const at = this.#position;
    this.#position += bytes.length;
    this.#queued += bytes.length;
    this.#chain = this.#chain.then(async () => {
      try {
        if (!this.#failure) await writeAll(this.out.handle, bytes, at);
      } catch (err) {
        this.fail(err);
      } finally {
        this.#queued -= bytes.length;
        if (this.#queued < WRITE_BACKLOG) for (const wake of this.#roomWaiters.splice(0)) wake();
        done?.();
      }
    });
  }

  /** Resolves once the backlog is below its bound. */
  async room(): Promise<void> {
    while (this.#queued >= WRITE_BACKLOG && !this.#failure) await new Promise<void>((resolve) => this.#roomWaiters.push(resolve));
    if (this.#failure) throw this.#failure;
  }

  /** Resolves once every queued write is done; throws the first failure. */
  async end(): Promise<void> {
    await this.#chain;
    if (this.#failure) throw this.#failure;
  }
}

/** Writes all of `bytes` at `at` (a write may take fewer bytes than asked). */
export async function writeAll(handle: FileHandle, bytes: Buffer, at: number): Promise<void> {
  let written = 0;
  while (written < bytes.length) {
    const { bytesWritten } = await handle.write(bytes, written, bytes.length - written, at + written);
    written += bytesWritten;
  }
}
