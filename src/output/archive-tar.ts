import type { Writable } from 'node:stream';
import { TarWriter, type ChunkSink } from '../tar/writer.js';
import type { ArchiveEntry } from './layout.js';
import { waitDrain } from '../util/streams.js';

/** Bytes handed to the destination per write. */
const CHUNK_SIZE = 256 * 1024;

/**
 * Writes entries (already sorted) as a tar archive to `dest`, with the project's deterministic tar
 * encoder: mtime 0 (as skopeo writes archives), owner 0:0 without names, directories 0755, files 0644.
 * Each blob streams from its source. `dest` is not ended. Rejects, having written a partial archive,
 * if a blob fails or is not the size its descriptor says, or if `dest` fails.
 */
export async function writeArchiveTar(entries: ArchiveEntry[], dest: Writable | NodeJS.WritableStream): Promise<void> {
  // The destination can fail between writes (a full disk, a closed pipe): keep the error for the next write.
  let destError: Error | undefined;
  const onDestError = (err: Error) => {
    destError ??= err;
  };
  dest.on('error', onDestError);
  const sink: ChunkSink = {
    // A fresh buffer each time: `dest` may hold on to a written chunk until it is flushed.
    acquire: () => Buffer.allocUnsafe(CHUNK_SIZE),
    async submit(chunk, length) {
      if (destError) throw destError;
      if (!dest.write(chunk.subarray(0, length))) await waitDrain(dest);
      if (destError) throw destError;
    },
  };
  const tar = new TarWriter(sink, { mtime: 0 });
  try {
    for (const entry of entries) {
      if (entry.kind === 'directory') {
        await tar.add({ type: 'directory', name: entry.name, mode: 0o755 });
      } else if (entry.kind === 'bytes') {
        await tar.add({ type: 'file', name: entry.name, mode: 0o644, size: entry.bytes.length, body: entry.bytes });
      } else {
        const body = entry.blob.open();
        try {
          await tar.add({ type: 'file', name: entry.name, mode: 0o644, size: entry.blob.descriptor.size, body });
        } finally {
          body.destroy();
        }
      }
    }
    await tar.finish();
  } finally {
    dest.off('error', onDestError);
  }
  if (destError) throw destError;
}
