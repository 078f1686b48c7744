import type { Readable, Writable } from 'node:stream';

/** Resolves when `stream` emits 'drain'; rejects if it fails or closes first (so a dead consumer never hangs us). */
export function waitDrain(stream: Writable | NodeJS.WritableStream): Promise<void> {
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      stream.off('drain', onDrain);
      stream.off('error', onError);
      stream.off('close', onClose);
    };
    const onDrain = () => {
      cleanup();
      resolve();
    };
    const onError = (err: Error) => {
      cleanup();
      reject(err);
    };
    const onClose = () => {
      cleanup();
      reject(new Error('stream closed before it drained'));
    };
    stream.on('drain', onDrain);
    stream.on('error', onError);
    stream.on('close', onClose);
  });
}

/** Copies `source` into `sink` with backpressure, without ending `sink`; returns the bytes copied. */
export async function copyInto(source: Readable | AsyncIterable<Buffer>, sink: Writable | NodeJS.WritableStream): Promise<number> {
  let bytes = 0;
  try {
    for await (const chunk of source as AsyncIterable<Buffer>) {
      bytes += chunk.length;
      if (!sink.write(chunk)) await waitDrain(sink);
    }
  } catch (err) {
    if ('destroy' in source && typeof source.destroy === 'function') source.destroy();
    throw err;
  }
  return bytes;
}
