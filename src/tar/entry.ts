import type { Readable } from 'node:stream';

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

/** Receives a layer's entries in the order they are to appear in the tar. `add` consumes a file's body fully. */
export interface TarSink {
  add(entry: TarEntry): Promise<void>;
}
