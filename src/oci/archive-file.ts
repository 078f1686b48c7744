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

/**
 * True when `path` already holds exactly the archive `entries` make: then it need not be written again.
 * Reading both sides from the page cache costs a fraction of writing (and of freeing the old file's
 * pages, which replacing it does): a rebuild in which nothing changed leaves its output as it was.
 */
export async function archiveFileMatches(entries: ArchiveEntry[], path: string): Promise<boolean> {
  const { small, copies, size } = planArchive(entries);
  let target: FileHandle;
  try {
    target = await openFile(path, 'r');
  } catch {
    return false;
  }
  try {
    const st = await target.stat();
    if (!st.isFile() || st.size !== size) return false;
    for (const { at, bytes } of small) {
      const have = Buffer.allocUnsafe(bytes.length);
      if (!(await readFully(target, have, at)) || !have.equals(bytes)) return false;
    }
    let same = true;
    await forEachChunk(copies, async (chunk, source, buffer) => {
      const theirs = buffer.subarray(0, chunk.length);
      const ours = buffer.subarray(chunk.length, 2 * chunk.length);
      const [a, b] = await Promise.all([readFully(source, theirs, chunk.start), readFully(target, ours, chunk.at)]);
      if (!a || !b || !theirs.equals(ours)) same = false;
      return same;
    });
    return same;
  } catch {
    return false;
  } finally {
    await target.close();
  }
}

async function readFully(handle: FileHandle, buffer: Buffer, position: number): Promise<boolean> {
  let done = 0;
  while (done < buffer.length) {
    const { bytesRead } = await handle.read(buffer, done, buffer.length - done, position + done);
    if (bytesRead === 0) return false;
    done += bytesRead;
  }
  return true;
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
const COPY_CHUNK = 1 << 20;
const COPIES_IN_FLIGHT = 4;

/**
 * Copies file ranges into `out` at their offsets, several at once. Large ranges are cut into chunks so
 * one big layer is spread over every lane too. Fails if a source is shorter than its range.
 */
export async function copyRanges(copies: RangeCopy[], out: FileHandle): Promise<void> {
  await forEachChunk(copies, async (chunk, source, buffer) => {
    let copied = 0;
    while (copied < chunk.length) {
      const { bytesRead } = await source.read(buffer, 0, chunk.length - copied, chunk.start + copied);
      if (bytesRead === 0) throw new Error(`${chunk.file} ends at byte ${chunk.start + copied}, before the blob range it should hold`);
      await writeAll(out, buffer.subarray(0, bytesRead), chunk.at + copied);
      copied += bytesRead;
    }
    return true;
  });
}

/**
 * Runs `visit` on every COPY_CHUNK of the ranges, COPIES_IN_FLIGHT at a time, each lane with a buffer of
 * two chunks and the source file open. Stops early when a visit returns false; rethrows the first error
 * once every lane has stopped.
 */
async function forEachChunk(
  copies: RangeCopy[],
  visit: (chunk: RangeCopy, source: FileHandle, buffer: Buffer) => Promise<boolean>,
): Promise<void> {
  const chunks: RangeCopy[] = [];
  for (const c of copies) {
    for (let done = 0; done < c.length; done += COPY_CHUNK) {
      chunks.push({ file: c.file, start: c.start + done, length: Math.min(COPY_CHUNK, c.length - done), at: c.at + done });
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
  let stop = false;
  const lane = async () => {
    const buffer = Buffer.allocUnsafe(2 * COPY_CHUNK);
    while (next < chunks.length && !stop) {
      const chunk = chunks[next++]!;
      if (!(await visit(chunk, await source(chunk.file), buffer))) stop = true;
    }
  };
  try {
    // Every lane settles before the handles close (and before the caller closes its own file).
    const lanes = await Promise.allSettled(
      Array.from({ length: Math.min(COPIES_IN_FLIGHT, chunks.length) }, () =>
        lane().catch((err: unknown) => {
          stop = true;
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
