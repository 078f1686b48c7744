import { createHash } from 'node:crypto';
import { once } from 'node:events';
import zlib from 'node:zlib';
import type { Compression } from './format.js';
import { piecesStream, type BytePiece } from '../util/pieces.js';
import { zstdDecompressor } from './zstd.js';

/** What a layer blob's bytes are, measured: its digest, and its tar's diffID and size. */
export interface MeasuredLayer {
  digest: string;
  diffId: string;
  uncompressedSize: number;
}

/**
 * Reads a layer blob once, hashing its stored bytes (the digest) and, decompressed, its tar (the
 * diffID). The cache uses it to check an entry it did not write in this format's lifetime: a
 * digest check alone cannot tell that an entry names the right blob with the wrong diffID.
 */
export async function measureLayer(pieces: readonly BytePiece[], compression: Compression): Promise<MeasuredLayer> {
  const stored = createHash('sha256');
  const tar = tarHasher(compression);
  for await (const chunk of piecesStream(pieces) as AsyncIterable<Buffer>) {
    stored.update(chunk);
    await tar.push(chunk);
  }
  return { digest: `sha256:${stored.digest('hex')}`, ...(await tar.end()) };
}

/**
 * The diffID and size of a layer blob's tar, from its stored bytes pushed in as they come (from a file,
 * or from a registry as they are downloaded): hashed as they are when uncompressed, else decompressed.
 * `push` waits for the decompressor to take a chunk, so a blob of many GB never piles up in memory.
 */
export function tarHasher(compression: Compression): { push(chunk: Buffer): Promise<void> | void; end(): Promise<{ diffId: string; uncompressedSize: number }> } {
  const hash = createHash('sha256');
  let uncompressedSize = 0;
  const take = (chunk: Buffer) => {
    hash.update(chunk);
    uncompressedSize += chunk.length;
  };
  const result = () => ({ diffId: `sha256:${hash.digest('hex')}`, uncompressedSize });
  if (compression === 'none') return { push: take, end: async () => result() };
  const inflate = layerDecompressor(compression);
  inflate.on('data', take);
  const done = new Promise<{ diffId: string; uncompressedSize: number }>((resolve, reject) => {
    inflate.on('end', () => resolve(result()));
    inflate.on('error', reject);
  });
  done.catch(() => {}); // told by end(), or by push() once the stream has failed
  return {
    push: async (chunk) => {
      if (!inflate.write(chunk)) await Promise.race([once(inflate, 'drain'), done]);
    },
    end: () => {
      inflate.end();
      return done;
    },
  };
}

/** A stream that decompresses a whole layer blob: every frame of it, concatenated. */
export function layerDecompressor(compression: Exclude<Compression, 'none'>): NodeJS.ReadWriteStream {
  switch (compression) {
    case 'gzip':
      // Node's gunzip reads concatenated members (our frames) as one stream.
      return zlib.createGunzip({ chunkSize: 1 << 20 });
    case 'zstd':
      // As do zstd readers with concatenated frames.
      return zstdDecompressor();
  }
}
