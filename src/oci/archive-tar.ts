import type { Writable } from 'node:stream';
import tar, { type Pack } from 'tar-stream';
import type { ArchiveEntry } from './layout.js';
import { copyInto, waitDrain } from './stream-util.js';

/**
 * Header fields every archive entry gets, so the same entries give the same bytes on any machine:
 * mtime 0 (as skopeo writes archives), root owner without names, fixed modes.
 */
const FIXED = { mtime: new Date(0), uid: 0, gid: 0, uname: '', gname: '' } as const;

/**
 * Writes entries (already sorted) as a ustar archive to `dest`, streaming each blob from its source.
 * `dest` is not ended. Rejects, having written a partial archive, if a blob fails or is not the size
 * its descriptor says.
 */
export async function writeArchiveTar(entries: ArchiveEntry[], dest: Writable | NodeJS.WritableStream): Promise<void> {
  const pack = tar.pack();
  // Failures reach the caller through the promises below; an 'error' event without a listener would crash the process.
  pack.on('error', () => {});
  // The destination can fail between writes (a full disk, a closed pipe): stop packing then, and report it.
  let destError: Error | undefined;
  const onDestError = (err: Error) => {
    destError ??= err;
    pack.destroy(err);
  };
  dest.on('error', onDestError);
  const consume = (async () => {
    for await (const chunk of pack as AsyncIterable<Buffer>) {
      if (!dest.write(chunk)) await waitDrain(dest);
    }
  })();
  const produce = (async () => {
    for (const entry of entries) await addEntry(pack, entry);
    pack.finalize();
  })();
  // Whichever side fails first stops the other: a dead consumer must not leave the producer waiting.
  const [produced, consumed] = await Promise.allSettled([
    produce.catch((err: unknown) => {
      pack.destroy(err as Error);
      throw err;
    }),
    consume.catch((err: unknown) => {
      pack.destroy(err as Error);
      throw err;
    }),
  ]);
  dest.off('error', onDestError);
  if (destError) throw destError;
  if (produced.status === 'rejected') throw produced.reason;
  if (consumed.status === 'rejected') throw consumed.reason;
}

async function addEntry(pack: Pack, entry: ArchiveEntry): Promise<void> {
  if (entry.kind === 'directory') {
    await new Promise<void>((resolve, reject) => {
      pack.entry({ ...FIXED, name: entry.name, type: 'directory', mode: 0o755 }, (err) => (err ? reject(err) : resolve()));
    });
    return;
  }
  if (entry.kind === 'bytes') {
    await new Promise<void>((resolve, reject) => {
      pack.entry({ ...FIXED, name: entry.name, type: 'file', mode: 0o644, size: entry.bytes.length }, entry.bytes, (err) =>
        err ? reject(err) : resolve(),
      );
    });
    return;
  }
  const size = entry.blob.descriptor.size;
  // tar-stream's entries are streamx Writables; node:stream's type describes the part used here.
  let sink!: Writable;
  const finished = new Promise<void>((resolve, reject) => {
    const onDone = (err?: Error | null) => (err ? reject(err) : resolve());
    sink = pack.entry({ ...FIXED, name: entry.name, type: 'file', mode: 0o644, size }, onDone) as unknown as Writable;
  });
  // A rejection that arrives while we are still copying is awaited below, not unhandled.
  finished.catch(() => {});
  sink.on('error', () => {});
  try {
    const copied = await copyInto(entry.blob.open(), sink);
    if (copied !== size) throw new Error(`blob ${entry.blob.descriptor.digest} gave ${copied} bytes, its descriptor says ${size}`);
    sink.end();
  } catch (err) {
    sink.destroy(err as Error);
    throw err;
  }
  await finished;
}
