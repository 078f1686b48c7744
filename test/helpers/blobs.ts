import { readFileSync, writeFileSync } from 'node:fs';
import type { BytePiece } from '../../src/util/pieces.js';

/** A layer blob's bytes, put together from its pieces (test sizes only: it is held in memory). */
export function blobBytes(blob: { pieces?: BytePiece[] }): Buffer {
  return Buffer.concat(
    blob.pieces!.map((p) => ('bytes' in p ? p.bytes : readFileSync(p.file).subarray(p.start, p.start + p.length))),
  );
}

/** Writes a layer blob's bytes to `file`, for tools that read files (gzip, tar); returns `file`. */
export function blobToFile(blob: { pieces?: BytePiece[] }, file: string): string {
  writeFileSync(file, blobBytes(blob));
  return file;
}
