import type { LayerSource, TarEntry } from './types.js';

/**
 * The same source, telling `onBytes` how many bytes of file contents went into the tar as they go
 * (for progress displays; a store path's NAR size or a wheel's installed size is the total). Without
 * `onBytes`, the source itself: nothing wraps every file's bytes when nobody listens.
 */
export function countingSource(source: LayerSource, onBytes: ((bytes: number) => void) | undefined): LayerSource {
  if (!onBytes) return source;
  return (sink) =>
    source({
      add(entry: TarEntry) {
        if (entry.type !== 'file') return sink.add(entry);
        if (Buffer.isBuffer(entry.body)) {
          return sink.add(entry).then(() => onBytes(entry.size));
        }
        const body = entry.body;
        return sink.add({
          ...entry,
          body: (async function* () {
            for await (const chunk of body as AsyncIterable<Buffer>) {
              onBytes(chunk.length);
              yield chunk;
            }
          })(),
        });
      },
    });
}
