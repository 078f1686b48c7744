import zlib from 'node:zlib';
import { UserError } from '../util/errors.js';
import { compressionLevel, deflateOptions, GZIP_MEMBER_HEADER, type LayerFormat } from './format.js';
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
    // Deflate's output is gathered straight into the member: zlib.deflateRaw would join its pieces first,
    // one more copy of every compressed byte, and more garbage on this thread.
    frame: (part) =>
      new Promise((resolve, reject) => {
        const pieces: Buffer[] = [];
        const deflate = zlib.createDeflateRaw(options);
        deflate.on('data', (piece: Buffer) => pieces.push(piece));
        deflate.on('error', reject);
        deflate.on('end', () => resolve(gzipMember(part, pieces)));
        deflate.end(part);
      }),
    frameSync: (bytes) => gzipMember(bytes, [zlib.deflateRawSync(bytes, options)]),
  };
}

/** A gzip member (RFC 1952) of `input`, deflated into `deflated`. */
function gzipMember(input: Buffer, deflated: Buffer[]): Buffer {
  const size = deflated.reduce((n, piece) => n + piece.length, 0);
  const member = Buffer.allocUnsafe(GZIP_MEMBER_HEADER.length + size + 8);
  let at = GZIP_MEMBER_HEADER.copy(member, 0);
  for (const piece of deflated) at += piece.copy(member, at);
  member.writeUInt32LE(zlib.crc32(input) >>> 0, at);
  member.writeUInt32LE(input.length % 0x100000000, at + 4);
  return member;
}

/**
 * How many parts compress at once across every layer being written (`--jobs`), and so how many cores
 * compression uses. Each part in flight holds one FRAME_SIZE buffer and a zlib state (~300 KiB), so
 * memory is bounded by this count whatever the size or number of layers. One per build, passed down.
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
