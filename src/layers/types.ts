import type { Readable } from 'node:stream';

/**
 * One entry of a layer tar, before it is written. Layers are built from these by every source:
 * store paths (NAR → entries), wheels, and the image-root layer.
 * Names are relative, without a leading `/` (`nix/store/…-bash/bin/bash`); directories have no trailing `/`.
 */
export type TarEntry =
  | { type: 'directory'; name: string; mode: number }
  | { type: 'file'; name: string; mode: number; size: number; body: Buffer | AsyncIterable<Buffer> | Readable }
  | { type: 'symlink'; name: string; target: string }
  | { type: 'hardlink'; name: string; target: string };

export type Compression = 'gzip' | 'none';

/** What writing a layer produced: a blob file on disk and its digests. */
export interface LayerBlob {
  /** Path of the (compressed) blob file. */
  file: string;
  /** `sha256:<hex>` of the blob as stored (compressed). */
  digest: string;
  /** Size in bytes of the blob as stored. */
  size: number;
  /** `sha256:<hex>` of the uncompressed tar (the diffID). */
  diffId: string;
  /** Size in bytes of the uncompressed tar. */
  uncompressedSize: number;
  compression: Compression;
}

/** Receives a layer's entries in the order they are to appear in the tar. `add` consumes a file's body fully. */
export interface TarSink {
  add(entry: TarEntry): Promise<void>;
}

/** Produces a layer's entries into a sink; called once per build of the layer. */
export type LayerSource = (sink: TarSink) => Promise<void>;
