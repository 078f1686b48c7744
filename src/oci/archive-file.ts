import { open as openFile, type FileHandle } from 'node:fs/promises';
import { BLOCK_SIZE, Typeflag, encodeHeaders, padToBlock } from '../layers/tar-header.js';
import type { BytePiece } from '../util/pieces.js';
import type { ArchiveEntry } from './layout.js';

/**
 * Writes an archive (the same bytes as writeArchiveTar) into a file by position instead of as a stream:
 * every entry's header and every blob's size is known up front, so the whole layout is planned first;
 * headers and small files are written at their offsets, and blob bytes are copied from their source
 * files with several reads and writes in flight at once. A warm build's output is then a copy bound by
 * the page cache, not a stream through one thread. Blobs must have `pieces` (see {@link canPlan}).
 */
export async function writeArchiveFile(entries: ArchiveEntry[], out: FileHandle): Promise<void> {
  const { small, copies, size } = planArchive(entries);
  await Promise.all(small.map(({ at, bytes }) => writeAll(out, bytes, at)));
  await copyRanges(copies, out);
  await out.truncate(size);
}

/** True when every blob entry says where its bytes are (so the archive can be written by position). */
export function canPlan(entries: ArchiveEntry[]): boolean {
  return entries.every((e) => e.kind !== 'blob' || e.blob.pieces !== undefined);
}

/** A range of a source file to copy to `at` in the output. */
export interface RangeCopy {
  file: string;
  start: number;
  length: number;
  at: number;
}

function planArchive(entries: ArchiveEntry[]): { small: { at: number; bytes: Buffer }[]; copies: RangeCopy[]; size: number } {
  const small: { at: number; bytes: Buffer }[] = [];
  const copies: RangeCopy[] = [];
  let at = 0;
  // Headers and small bodies are gathered into runs, so a thousand-entry archive is a few writes.
  let run: Buffer[] = [];
  let runAt = 0;
  const put = (bytes: Buffer) => {
    if (run.length === 0) runAt = at;
    run.push(bytes);
    at += bytes.length;
  };
  const flush = () => {
    if (run.length > 0) small.push({ at: runAt, bytes: Buffer.concat(run) });
    run = [];
  };
  const pad = (size: number) => {
    const count = padToBlock(size) - size;
    if (count > 0) put(Buffer.alloc(count));
  };
  const header = (name: string, typeflag: Typeflag, mode: number, size: number) =>
    put(encodeHeaders({ name, typeflag, mode, size, mtime: 0, linkname: '' }));

  for (const entry of entries) {
    if (entry.kind === 'directory') {
      header(`${entry.name}/`, Typeflag.directory, 0o755, 0);
    } else if (entry.kind === 'bytes') {
      header(entry.name, Typeflag.file, 0o644, entry.bytes.length);
      put(entry.bytes);
      pad(entry.bytes.length);
    } else {
      const size = entry.blob.descriptor.size;
      header(entry.name, Typeflag.file, 0o644, size);
      let seen = 0;
      for (const piece of entry.blob.pieces!) {
        if ('bytes' in piece) {
          put(piece.bytes);
          seen += piece.bytes.length;
          continue;
        }
        flush();
        copies.push({ file: piece.file, start: piece.start, length: piece.length, at });
        at += piece.length;
        seen += piece.length;
      }
      if (seen !== size) throw new Error(`blob ${entry.blob.descriptor.digest} has ${seen} bytes in its pieces, its descriptor says ${size}`);
      pad(size);
    }
  }
  put(Buffer.alloc(2 * BLOCK_SIZE));
  flush();
  return { small, copies, size: at };
}

/** Bytes per read and write, and how many copies run at once (libuv's thread pool runs four). */
const COPY_CHUNK = 4 << 20;
const COPIES_IN_FLIGHT = 4;

/**
 * Copies file ranges into `out` at their offsets, several at once. Large ranges are cut into chunks so
 * one big layer is spread over every lane too. Fails if a source is shorter than its range.
 */
export async function copyRanges(copies: RangeCopy[], out: FileHandle): Promise<void> {
  const chunks: RangeCopy[] = [];
  for (const c of copies) {
    for (let done = 0; done < c.length; done += COPY_CHUNK) {
      const length = Math.min(COPY_CHUNK, c.length - done);
      chunks.push({ file: c.file, start: c.start + done, length, at: c.at + done });
    }
  }
  const handles = new Map<string, Promise<FileHandle>>();
  const source = (file: string) => {
    let handle = handles.get(file);
    if (!handle) {
      handle = openFile(file, 'r');
      handles.set(file, handle);
    }
    return handle;
  };
  let next = 0;
  let failed = false;
  const lane = async () => {
    const buffer = Buffer.allocUnsafe(COPY_CHUNK);
    while (next < chunks.length && !failed) {
      const chunk = chunks[next++]!;
      const from = await source(chunk.file);
      let copied = 0;
      while (copied < chunk.length) {
        const { bytesRead } = await from.read(buffer, 0, chunk.length - copied, chunk.start + copied);
        if (bytesRead === 0) throw new Error(`${chunk.file} ends at byte ${chunk.start + copied}, before the blob range it should hold`);
        await writeAll(out, buffer.subarray(0, bytesRead), chunk.at + copied);
        copied += bytesRead;
      }
    }
  };
  try {
    // Every lane settles before the handles close (and before the caller closes `out`).
    const lanes = await Promise.allSettled(
      Array.from({ length: Math.min(COPIES_IN_FLIGHT, chunks.length) }, () =>
        lane().catch((err: unknown) => {
          failed = true;
          throw err;
        }),
      ),
    );
    const failure = lanes.find((l): l is PromiseRejectedResult => l.status === 'rejected');
    if (failure) throw failure.reason;
  } finally {
    await Promise.all([...handles.values()].map((h) => h.then((fh) => fh.close(), () => undefined)));
  }
}

async function writeAll(out: FileHandle, bytes: Buffer, at: number): Promise<void> {
  let written = 0;
  while (written < bytes.length) {
    const { bytesWritten } = await out.write(bytes, written, bytes.length - written, at + written);
    written += bytesWritten;
  }
}

/** The range copies that put a blob's pieces into a file of its own (for directory outputs). */
export function pieceCopies(pieces: BytePiece[]): { copies: RangeCopy[]; bytes: { at: number; bytes: Buffer }[] } {
  const copies: RangeCopy[] = [];
  const bytes: { at: number; bytes: Buffer }[] = [];
  let at = 0;
  for (const piece of pieces) {
    if ('bytes' in piece) {
      bytes.push({ at, bytes: piece.bytes });
      at += piece.bytes.length;
    } else {
      copies.push({ file: piece.file, start: piece.start, length: piece.length, at });
      at += piece.length;
    }
  }
  return { copies, bytes };
}

export { writeAll };
