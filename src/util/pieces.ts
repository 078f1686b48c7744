import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';

/**
 * Bytes described rather than held: ranges of files and small in-memory buffers, in order. A layer
 * composed from cached parts is its head, ranges of the parts' blob files and its end; nothing copies
 * them into one file until an output or a registry needs the bytes.
 */
export type BytePiece = { file: string; start: number; length: number } | { bytes: Buffer };

export function piecesLength(pieces: readonly BytePiece[]): number {
  return pieces.reduce((n, p) => n + ('bytes' in p ? p.bytes.length : p.length), 0);
}

/** Throws unless the pieces hold exactly `size` bytes (what the blob `digest`'s descriptor says). */
export function checkPiecesLength(pieces: readonly BytePiece[], size: number, digest: string): void {
  const length = piecesLength(pieces);
  if (length !== size) throw new Error(`blob ${digest} has ${length} bytes in its pieces, its descriptor says ${size}`);
}

/** The pieces' bytes from `start` on, as one stream (file ranges read 1 MiB at a time). */
export function piecesStream(pieces: readonly BytePiece[], start = 0): Readable {
  let skip = start;
  const from: BytePiece[] = [];
  for (const piece of pieces) {
    const length = 'bytes' in piece ? piece.bytes.length : piece.length;
    if (skip >= length) {
      skip -= length;
      continue;
    }
    if ('bytes' in piece) from.push({ bytes: piece.bytes.subarray(skip) });
    else from.push({ file: piece.file, start: piece.start + skip, length: piece.length - skip });
    skip = 0;
  }
  if (from.length === 1 && !('bytes' in from[0]!)) return rangeStream(from[0]);
  return Readable.from(
    (async function* () {
      for (const piece of from) {
        if ('bytes' in piece) {
          if (piece.bytes.length > 0) yield piece.bytes;
          continue;
        }
        yield* rangeStream(piece);
      }
    })(),
    { objectMode: false },
  );
}

function rangeStream(piece: { file: string; start: number; length: number }): Readable {
  // createReadStream's `end` is inclusive; an empty range must read nothing.
  if (piece.length === 0) return Readable.from([]);
  return createReadStream(piece.file, { start: piece.start, end: piece.start + piece.length - 1, highWaterMark: 1 << 20 });
}
