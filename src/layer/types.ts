import type { TarSink } from '../tar/entry.js';

export type { TarEntry, TarSink, Owner } from '../tar/entry.js';

/** Produces a layer's entries into a sink; called once per write of the layer. */
export type LayerSource = (sink: TarSink) => Promise<void>;

/**
 * A compression as the layer writer uses it: tar parts in, self-contained frames out. Frames of
 * consecutive parts concatenate into one valid stream, so parts compress independently, in parallel,
 * and a layer can be composed of frames compressed at other times: gzip members here, zstd frames in
 * zstd.ts.
 */
export interface Codec {
  /** Compresses one part on the thread pool into a whole frame. */
  frame(part: Buffer): Promise<Buffer>;
  /** The same for small in-memory bytes (a layer's first and last blocks), on this thread. */
  frameSync(bytes: Buffer): Buffer;
}
