import { readFileSync, writeFileSync } from 'node:fs';
import type { LayerBlob } from '../../src/layer/types.js';

/** A layer blob's bytes, put together from its pieces (test sizes only: it is held in memory). */
export function blobBytes(blob: Pick<LayerBlob, 'pieces'>): Buffer {
  return Buffer.concat(
    blob.pieces.map((p) => ('bytes' in p ? p.bytes : readFileSync(p.file).subarray(p.start, p.start + p.length))),
  );
}

/** Writes a layer blob's bytes to `file`, for tools that read files (gzip, tar); returns `file`. */
export function blobToFile(blob: Pick<LayerBlob, 'pieces'>, file: string): string {
  writeFileSync(file, blobBytes(blob));
  return file;
}
