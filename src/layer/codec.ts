import zlib from 'node:zlib';
import { UserError } from '../util/errors.js';
import { Spares } from '../util/spares.js';
import { compressionLevel, deflateOptions, FRAME_SIZE, GZIP_MEMBER_HEADER, type LayerFormat } from './format.js';
import { rawZlib } from '../util/raw-zlib.js';
import { sharedThreads, type Threads } from '../util/threads.js';
import { deflateWorkerMain } from './deflate-worker.js';
import { FramePool } from './frame-pool.js';
import { zstdCodec } from './zstd.js';
import type { Codec } from './types.js';

export type { Codec } from './types.js';

/** The codec of a layer format; null for uncompressed layers (the blob is the tar). */
export function codecOf(format: LayerFormat): Codec | null {
  if (format.compression === 'gzip') return gzipCodec(format.gzipLevel);
  if (format.compression === 'zstd') return zstdCodec(compressionLevel(format));
  return null;
}

/** Bytes of a gzip member's piece: small enough that a member's last piece wastes little. */
const MEMBER_PIECE_SIZE = 256 << 10;

/** gzip members made on the shared threads (see deflateWorkerMain), `threads` of them at most. */
export function gzipFramePool(threads?: number, on: Threads = sharedThreads()): FramePool<zlib.ZlibOptions> {
  const source = `(port) => (${deflateWorkerMain.toString()})(port, ${rawZlib.toString()}, ${JSON.stringify([...GZIP_MEMBER_HEADER])}, ${MEMBER_PIECE_SIZE})`;
  return new FramePool('gzip', { name: 'deflate', source }, true, threads, on);
}

let gzipFrames: FramePool<zlib.ZlibOptions> | undefined;

function gzipCodec(level: number): Codec {
  const options = deflateOptions(level);
  // Output goes to the thread's pieces: zlib's chunk size has no say there.
  const { chunkSize: _, ...settings } = options;
  return {
    frame: (part, length) => (gzipFrames ??= gzipFramePool()).frame(part, length, settings),
    frameSync: (bytes) => gzipMember(bytes, zlib.deflateRawSync(bytes, options)),
  };
}

/** A gzip member (RFC 1952) of `input`, deflated into `deflated`: the bytes deflate-worker.ts makes on the threads. */
function gzipMember(input: Buffer, deflated: Buffer): Buffer {
  const trailer = Buffer.allocUnsafe(8);
  trailer.writeUInt32LE(zlib.crc32(input) >>> 0, 0);
  trailer.writeUInt32LE(input.length % 0x100000000, 4);
  return Buffer.concat([GZIP_MEMBER_HEADER, deflated, trailer]);
}

/** Frame-sized buffers kept for the next parts, whichever build takes them. */
const PARTS = new Spares(FRAME_SIZE, 8);

/**
 * A build's compression budget, shared by every layer it writes: `count` turns (`--jobs`), each the
 * right to compress one part now, and so how many cores compression uses; and the parts themselves
 * (FRAME_SIZE buffers of tar being filled, waiting for a turn or compressing), two more than the
 * turns: a part filling while the others compress keeps every turn busy, and more only wait. So memory
 * is bounded by `count` whatever the size or number of layers. One per build, passed down.
 */
export class Turns {
  #inFlight = 0;
  readonly #waiting: (() => void)[] = [];
  #parts = 0;
  readonly #partWaiting: ((part: Buffer) => void)[] = [];

  constructor(readonly count: number) {
    if (!Number.isInteger(count) || count < 1) throw new UserError(`--jobs must be a whole number of at least 1, got ${count}`);
  }

  /** Takes a turn: synchronously (undefined) when one is free, else a promise of one. */
  take(): Promise<void> | undefined {
    if (this.#inFlight < this.count) {
      this.#inFlight++;
      return undefined;
    }
    return new Promise((resolve) => this.#waiting.push(resolve));
  }

  give(): void {
    const next = this.#waiting.shift();
    if (next) next();
    else this.#inFlight--;
  }

  /** A part to fill: at once when the budget has one, else a promise of the next one given back. */
  part(): Buffer | Promise<Buffer> {
    if (this.#parts < this.count + 2) {
      this.#parts++;
      return PARTS.take();
    }
    return new Promise((resolve) => this.#partWaiting.push(resolve));
  }

  /** Gives a part back (null: its memory did not come back, e.g. from a thread that died). Once per part taken. */
  givePart(part: Buffer | null): void {
    const next = this.#partWaiting.shift();
    if (next) return next(part?.length === FRAME_SIZE ? part : PARTS.take());
    this.#parts--;
    if (part) PARTS.give(part);
  }
}
