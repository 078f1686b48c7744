import { link, mkdir, open, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { UserError } from '../util/errors.js';
import { writeArchiveTar } from './archive-tar.js';
import { outputError, writeDirectoryAtomically, writeFileAtomically, writeFileAtomicallyAt } from '../util/atomic.js';
import { archiveFileMatches, canPlan, verifyBlobs, writeArchiveFile, writeBlobPieces } from './archive-file.js';
import { checkPiecesLength, type BytePiece } from '../util/pieces.js';
import type { OutputFormat } from './formats.js';
import type { Blob, Image } from '../model/image.js';
import { dockerArchiveEntries, ociLayoutEntries, type ArchiveEntry } from './layout.js';
import { copyInto } from '../util/streams.js';

export type { OutputFormat } from './formats.js';
export { OUTPUT_FORMATS, parseOutputFormat } from './formats.js';

export interface WriteImageOptions {
  format: OutputFormat;
  /** A file or directory path, or `-` for standard output (archives only). */
  output: string;
  /** Where `-` writes (default process.stdout). */
  stdout?: Writable | NodeJS.WritableStream;
}

/**
 * Writes an image in one of the output formats. Files and directories appear atomically: an error or
 * an interrupted process leaves no output and no temporary file. Blobs whose `pieces` are known are
 * copied by position (archives) or hard-linked (layouts); others are streamed from their source.
 */
export async function writeImage(image: Image, options: WriteImageOptions): Promise<void> {
  const { format, output } = options;
  if (format === 'oci-layout') {
    if (output === '-') throw new UserError('--format oci-layout writes a directory and cannot go to standard output; use oci-archive');
    await writeDirectoryAtomically(output, (dir) => writeEntriesToDirectory(ociLayoutEntries(image), dir));
    return;
  }
  const entries = format === 'oci-archive' ? ociLayoutEntries(image) : dockerArchiveEntries(image);
  if (output === '-') {
    // A stream cannot be taken back: blobs from the cache are checked before the first byte goes out.
    await verifyBlobs(image.layers);
    const stdout = options.stdout ?? process.stdout;
    await writeArchiveTar(entries, stdout).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') throw new UserError('standard output was closed before the archive was written', { cause: err });
      throw err;
    });
    return;
  }
  if (!canPlan(entries)) return writeFileAtomically(output, (out) => writeArchiveTar(entries, out));
  // Already these very bytes (a rebuild where nothing changed): left in place, only its mtime renewed.
  if (await archiveFileMatches(entries, output)) {
    const now = new Date();
    await utimes(output, now, now).catch((err: unknown) => {
      throw outputError(output, err);
    });
    return;
  }
  await writeFileAtomicallyAt(output, (out) => writeArchiveFile(entries, out));
}

async function writeEntriesToDirectory(entries: ArchiveEntry[], dir: string): Promise<void> {
  for (const entry of entries) {
    const path = join(dir, entry.name);
    if (entry.kind === 'directory') {
      await mkdir(path, { recursive: true });
    } else if (entry.kind === 'bytes') {
      await writeFile(path, entry.bytes, { mode: 0o644 });
    } else {
      await writeBlobFile(entry.blob, path);
    }
  }
}

async function writeBlobFile(blob: Blob, path: string): Promise<void> {
  if (blob.pieces) return writePiecesFile(blob, blob.pieces, path);
  const handle = await open(path, 'wx', 0o644);
  const out = handle.createWriteStream();
  // Kept for the end: a write error between our writes must not be an unhandled 'error' event.
  let failure: Error | undefined;
  out.on('error', (err) => (failure ??= err));
  try {
    const copied = await copyInto(blob.open(), out);
    if (copied !== blob.descriptor.size) {
      throw new Error(`blob ${blob.descriptor.digest} gave ${copied} bytes, its descriptor says ${blob.descriptor.size}`);
    }
    await new Promise<void>((resolve, reject) => {
      out.end(() => (failure ? reject(failure) : resolve()));
      out.once('close', () => (failure ? reject(failure) : resolve()));
    });
  } catch (err) {
    out.destroy();
    throw failure ?? err;
  }
}

/**
 * A blob that lies whole in one file is hard-linked (blobs are content-addressed and never written to
 * again); otherwise, or across file systems, its pieces are copied by position.
 */
async function writePiecesFile(blob: Blob, pieces: BytePiece[], path: string): Promise<void> {
  checkPiecesLength(pieces, blob.descriptor.size, blob.descriptor.digest);
  const only = pieces.length === 1 ? pieces[0]! : null;
  if (only && !('bytes' in only) && only.start === 0 && only.length === blob.descriptor.size) {
    const linked = await stat(only.file).then(
      (st) => st.size === only.length && link(only.file, path).then(() => true, () => false),
      () => false,
    );
    if (linked) {
      // Linked, not read: a blob from the cache is checked here instead.
      await verifyBlobs([blob]);
      return;
    }
  }
  const out = await open(path, 'wx', 0o644);
  try {
    await writeBlobPieces(blob, out);
  } finally {
    await out.close();
  }
}
