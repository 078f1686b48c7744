import { createHash } from 'node:crypto';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
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
  const tar = createHash('sha256');
  let uncompressedSize = 0;
  const into = (hash: ReturnType<typeof createHash>, count: boolean) =>
    new Writable({
      write(chunk: Buffer, _encoding, done) {
        hash.update(chunk);
        if (count) uncompressedSize += chunk.length;
        done();
      },
    });
  if (compression === 'none') {
    await pipeline(piecesStream(pieces), into(stored, true));
    const digest = `sha256:${stored.digest('hex')}`;
    return { digest, diffId: digest, uncompressedSize };
  }
  const inflate = layerDecompressor(compression);
  const input = piecesStream(pieces);
  input.on('data', (chunk: Buffer) => stored.update(chunk));
  await pipeline(input, inflate, into(tar, true));
  return { digest: `sha256:${stored.digest('hex')}`, diffId: `sha256:${tar.digest('hex')}`, uncompressedSize };
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
