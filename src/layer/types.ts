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
  /**
   * Compresses the first `length` bytes of `part` on a thread into a whole frame. The part's memory is
   * the codec's until the frame comes back with it (`Frame.part`).
   */
  frame(part: Buffer, length: number): Promise<Frame>;
  /** The same for small in-memory bytes (a layer's first and last blocks), on this thread. */
  frameSync(bytes: Buffer): Buffer;
}

/** A compressed frame: its bytes in order, in memory that goes back to the codec once they are written. */
export interface Frame {
  bytes: Buffer[];
  /** The part's memory, back for the next part; null when it did not come back (a thread that died). */
  part: Buffer | null;
  /** The bytes are written: their memory goes to the next frames. Called once. */
  release(): void;
}
