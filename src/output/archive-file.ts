import { open as openFile, type FileHandle } from 'node:fs/promises';
import { BLOCK_SIZE, Typeflag, encodeHeaders, padToBlock } from '../tar/header.js';
import { HashReadError, runPieces, sha256Pieces } from '../util/hash-pool.js';
import { checkPiecesLength } from '../util/pieces.js';
import type { Blob } from '../model/image.js';
import type { ArchiveEntry } from './layout.js';

/**
 * A blob whose bytes are not those its digest names: a cached blob damaged on disk. The build drops the
 * cache entry, makes the layer again and writes the output again; nothing half-written is left.
 */
export class BlobCheckError extends Error {
  constructor(
    readonly digest: string,
    why: string,
  ) {
    super(`blob ${digest}: ${why}`);
    this.name = 'BlobCheckError';
  }
}

/**
 * Writes an archive (the same bytes as writeArchiveTar) into a file by position instead of as a stream:
 * every entry's header and every blob's size is known up front, so the whole layout is planned first.
 * Headers and small files are written at their offsets; each blob is copied by a hash pool thread,
 * which also checks the bytes of a blob marked `verify` (taken from the cache unread) against its
 * digest in the same pass. Blobs must have `pieces` (see {@link canPlan}).
 */
export async function writeArchiveFile(entries: ArchiveEntry[], out: FileHandle): Promise<void> {
  const { small, blobs, size } = planArchive(entries);
  await Promise.all(small.map(({ at, bytes }) => writeAll(out, bytes, at)));
  await eachBlob(blobs, async ({ blob, at }) => {
    const result = await runPieces({ pieces: blob.pieces!, hash: blob.verify === true, copyTo: { fd: out.fd, at } });
    checkDigest(blob, result.digest);
  });
  await out.truncate(size);
}

/**
 * True when `path` already holds exactly the archive `entries` make: then it need not be written again.
 * Reading both sides from the page cache costs a fraction of writing (and of freeing the old file's
 * pages, which replacing it does): a rebuild in which nothing changed leaves its output as it was.
 * Blobs marked `verify` are checked against their digests in the same pass.
 */
export async function archiveFileMatches(entries: ArchiveEntry[], path: string): Promise<boolean> {
  const { small, blobs, size } = planArchive(entries);
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
      const { bytesRead } = await target.read(have, 0, bytes.length, at);
      if (bytesRead !== bytes.length || !have.equals(bytes)) return false;
    }
    let same = true;
    await eachBlob(blobs, async ({ blob, at }) => {
      if (!same) return;
      const result = await runPieces({ pieces: blob.pieces!, hash: blob.verify === true, compareWith: { fd: target.fd, at } });
      if (!result.same) same = false;
      else checkDigest(blob, result.digest);
    });
    return same;
  } catch (err) {
    if (err instanceof BlobCheckError) throw err;
    return false;
  } finally {
    await target.close();
  }
}

/** Writes a blob by itself into `out` (a directory output's blob file), checking it if marked `verify`. */
export async function writeBlobPieces(blob: Blob, out: FileHandle): Promise<void> {
  const result = await runPieces({ pieces: blob.pieces!, hash: blob.verify === true, copyTo: { fd: out.fd, at: 0 } }).catch((err: unknown) => {
    throw asCheckError(blob, err);
  });
  checkDigest(blob, result.digest);
  await out.truncate(blob.descriptor.size);
}

/** Checks the bytes of the blobs marked `verify` (all at once, on the hash pool) before they are streamed. */
export async function verifyBlobs(blobs: Blob[]): Promise<void> {
  await eachBlob(
    blobs.filter((b) => b.verify && b.pieces).map((blob) => ({ blob, at: 0 })),
    async ({ blob }) => checkDigest(blob, (await sha256Pieces(blob.pieces!)).digest),
  );
}

/** True when every blob entry says where its bytes are (so the archive can be written by position). */
export function canPlan(entries: ArchiveEntry[]): boolean {
  return entries.every((e) => e.kind !== 'blob' || e.blob.pieces !== undefined);
}

function checkDigest(blob: Blob, digest: string | null): void {
  if (blob.verify && digest !== blob.descriptor.digest) throw new BlobCheckError(blob.descriptor.digest, `its bytes hash to ${digest}`);
}

/** A source that cannot be read (a cached blob truncated or gone) is a damaged blob too. */
function asCheckError(blob: Blob, err: unknown): unknown {
  if (err instanceof HashReadError && err.file !== '') return new BlobCheckError(blob.descriptor.digest, err.message);
  return err;
}

/** Runs `each` for every blob (the hash pool bounds how many run at once); rethrows the first failure once all settled. */
async function eachBlob(blobs: { blob: Blob; at: number }[], each: (b: { blob: Blob; at: number }) => Promise<void>): Promise<void> {
  const outcomes = await Promise.allSettled(
    blobs.map((b) =>
      each(b).catch((err: unknown) => {
        throw asCheckError(b.blob, err);
      }),
    ),
  );
  const failure = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
  if (failure) throw failure.reason;
}

function planArchive(entries: ArchiveEntry[]): { small: { at: number; bytes: Buffer }[]; blobs: { blob: Blob; at: number }[]; size: number } {
  const small: { at: number; bytes: Buffer }[] = [];
  const blobs: { blob: Blob; at: number }[] = [];
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
      checkPiecesLength(entry.blob.pieces!, size, entry.blob.descriptor.digest);
      header(entry.name, Typeflag.file, 0o644, size);
      flush();
      blobs.push({ blob: entry.blob, at });
      at += size;
      pad(size);
    }
  }
  put(Buffer.alloc(2 * BLOCK_SIZE));
  flush();
  return { small, blobs, size: at };
}

async function writeAll(out: FileHandle, bytes: Buffer, at: number): Promise<void> {
  let written = 0;
  while (written < bytes.length) {
    const { bytesWritten } = await out.write(bytes, written, bytes.length - written, at + written);
    written += bytesWritten;
  }
}

