import zlib from 'node:zlib';
import { UserError } from '../util/errors.js';
import { compressionLevel, deflateOptions, GZIP_MEMBER_HEADER, type LayerFormat } from './format.js';
import { deflatePool } from './deflate-pool.js';
import { zstdCodec } from './zstd.js';
import type { Codec } from './types.js';

export type { Codec } from './types.js';

/** The codec of a layer format; null for uncompressed layers (the blob is the tar). */
export function codecOf(format: LayerFormat): Codec | null {
  if (format.compression === 'gzip') return gzipCodec(format.gzipLevel);
  if (format.compression === 'zstd') return zstdCodec(compressionLevel(format));
  return null;
}

function gzipCodec(level: number): Codec {
  const options = deflateOptions(level);
  return {
    frame: (part, length) => deflatePool().member(part, length, options),
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

/**
 * How many parts compress at once across every layer being written (`--jobs`), and so how many cores
 * compression uses. Each part in flight holds one FRAME_SIZE buffer (on its way to a thread and back)
 * and its frame's memory, so memory is bounded by this count whatever the size or number of layers.
 * One per build, passed down.
 */
export class Turns {
  #inFlight = 0;
  readonly #waiting: (() => void)[] = [];

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
}
