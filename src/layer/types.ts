import type { Readable } from 'node:stream';
import type { BytePiece } from '../util/pieces.js';

/**
 * One entry of a layer tar, before it is written. Layers are built from these by every source:
 * store paths (NAR → entries), wheels, and the image-root layer.
 * Names are relative, without a leading `/` (`nix/store/…-bash/bin/bash`); directories have no trailing `/`.
 */
export type TarEntry =
  | { type: 'directory'; name: string; mode: number; owner?: Owner }
  | { type: 'file'; name: string; mode: number; size: number; body: Buffer | AsyncIterable<Buffer> | Readable; owner?: Owner }
  | { type: 'symlink'; name: string; target: string }
  | { type: 'hardlink'; name: string; target: string };

/** Numeric owner of an entry; root (0:0) when left out, as for everything in the store. */
export interface Owner {
  uid: number;
  gid: number;
}

export type Compression = 'gzip' | 'none';

export type { BytePiece } from '../util/pieces.js';

/** A layer's blob: where its (compressed) bytes are, and its digests. */
export interface LayerBlob {
  /** The blob's bytes, in order: a whole file, or a composed layer's head, part ranges and end. */
  pieces: BytePiece[];
  /** `sha256:<hex>` of the blob as stored (compressed). */
  digest: string;
  /** Size in bytes of the blob as stored. */
  size: number;
  /** `sha256:<hex>` of the uncompressed tar (the diffID). */
  diffId: string;
  /** Size in bytes of the uncompressed tar. */
  uncompressedSize: number;
  compression: Compression;
  /** Taken from the cache without being read: whoever reads the bytes checks them against `digest`. */
  unverified?: boolean;
}

/** A layer written whole to one file (by writeLayer). */
export interface LayerFile extends LayerBlob {
  file: string;
}

/** Receives a layer's entries in the order they are to appear in the tar. `add` consumes a file's body fully. */
export interface TarSink {
  add(entry: TarEntry): Promise<void>;
}

/** Produces a layer's entries into a sink; called once per build of the layer. */
export type LayerSource = (sink: TarSink) => Promise<void>;
