import zlib from 'node:zlib';
import { UserError } from '../util/errors.js';

/**
 * Everything that decides a layer blob's bytes besides its entries, in one place. Change any of these
 * and images change: bump CACHE_FORMAT_VERSION with them (and say why in the commit).
 */

/**
 * Bump when the bytes a cached entry stands for would change for the same inputs: the tar writer's
 * encoding, the store-path source's entries or modes, the compression framing, or the cache's layout.
 */
export const CACHE_FORMAT_VERSION = 3;

export type { Compression } from '../model/image.js';
import type { Compression } from '../model/image.js';
export const COMPRESSIONS: readonly Compression[] = ['gzip', 'zstd', 'none'];

/** How a layer's tar becomes its blob: compression, its level, and every entry's mtime. */
export interface LayerFormat {
  compression: Compression;
  /** zlib level 1–9 for gzip (ignored otherwise). */
  gzipLevel: number;
  /** zstd level 1–19 for zstd (ignored otherwise); default DEFAULT_ZSTD_LEVEL. */
  zstdLevel?: number;
  /** Seconds since the epoch, every entry's mtime (SOURCE_DATE_EPOCH). */
  mtime: number;
}

/** zlib's default level, as Docker uses. */
export const DEFAULT_GZIP_LEVEL = 6;

/**
 * zstd's own default level: on the bench closure smaller than gzip -6 (about 3 % of the tar less) and
 * faster to make; levels above it trade much build time for a few per cent.
 */
export const DEFAULT_ZSTD_LEVEL = 3;

/** The levels each compression accepts (zstd's regular ones: 20–22 need hundreds of MB per thread). */
export const COMPRESSION_LEVELS: Readonly<Record<Compression, { min: number; max: number } | null>> = {
  gzip: { min: 1, max: 9 },
  zstd: { min: 1, max: 19 },
  none: null,
};

/** The level a format compresses at (0 uncompressed): part of every cache key. */
export function compressionLevel(format: LayerFormat): number {
  if (format.compression === 'gzip') return format.gzipLevel;
  if (format.compression === 'zstd') return format.zstdLevel ?? DEFAULT_ZSTD_LEVEL;
  return 0;
}

/**
 * A compressed blob is a series of frames, one per FRAME_SIZE of tar, each compressed alone (so one
 * huge layer compresses on every core) and concatenated: gzip members (RFC 1952 §2.2), or zstd frames
 * (RFC 8878 §3.1), which every gzip or zstd reader reads as one stream. Frame boundaries depend on this constant only, never on the machine.
 * 4 MiB frames cost 0.03 % in size against one stream on the bench closure (1 MiB frames: 0.19 %).
 */
export const FRAME_SIZE = 4 << 20;

/**
 * The fixed gzip member header: no name, mtime 0, XFL 0, OS 3 (Unix), whatever the platform. zlib's own
 * header takes its OS byte from the platform it was built for and its XFL byte from the level.
 */
export const GZIP_MEMBER_HEADER = Buffer.from([0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0x03]);

/** Raw deflate settings of every member (zlib's defaults; a larger output chunk for fewer round trips). */
export function deflateOptions(level: number): zlib.ZlibOptions {
  return { level, windowBits: 15, memLevel: 8, strategy: zlib.constants.Z_DEFAULT_STRATEGY, chunkSize: 256 << 10 };
}

/** The two zero blocks that end every tar archive. */
export const END_OF_ARCHIVE = Buffer.alloc(1024);

/** Throws a UserError unless the format is one nix2oci can write. */
export function checkLayerFormat(format: LayerFormat): void {
  if (!COMPRESSIONS.includes(format.compression)) {
    throw new UserError(`unknown compression "${String(format.compression)}" (use ${COMPRESSIONS.join(' or ')})`);
  }
  const range = COMPRESSION_LEVELS[format.compression];
  const level = compressionLevel(format);
  if (range && (!Number.isInteger(level) || level < range.min || level > range.max)) {
    throw new UserError(`${format.compression} level must be ${range.min} to ${range.max}, got ${level}`);
  }
}
