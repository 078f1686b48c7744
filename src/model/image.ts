import type { Readable } from 'node:stream';
import type { BytePiece } from '../util/pieces.js';

/**
 * The image model every writer and the registry client consume, after go-containerregistry's
 * Image/Layer: an image is a config blob, an ordered list of layer blobs and a manifest naming them.
 * Blobs are opened as streams; nothing holds a layer in memory.
 */
export interface Descriptor {
  mediaType: string;
  digest: string; // sha256:<hex>
  size: number;
  annotations?: Record<string, string>;
}

export interface Blob {
  descriptor: Descriptor;
  /** Where the bytes lie, when they are in local files: writers then copy ranges instead of streaming. */
  pieces?: BytePiece[];
  /**
   * The bytes were taken from a cache without being read: a writer copying them checks them against the
   * digest in the same pass, and fails with BlobCheckError when they differ.
   */
  verify?: boolean;
  /** A fresh stream of the blob's bytes from `start` (default 0) to the end. */
  open(start?: number): Readable;
}

export interface Layer extends Blob {
  /** `sha256:<hex>` of the uncompressed tar. */
  diffId: string;
  uncompressedSize?: number;
  /** Store paths (or wheel file names, or `image-root`) this layer holds, for `inspect`. */
  contents?: string[];
}

export interface Image {
  /** The manifest exactly as it is stored and pushed (its sha256 is the image digest). */
  manifestBytes: Buffer;
  manifestMediaType: string;
  /** The config exactly as stored. */
  configBytes: Buffer;
  configDescriptor: Descriptor;
  layers: Layer[];
  /** References such as `nix2oci/demo:latest` recorded with the image (may be empty). */
  tags: string[];
}

export const MediaTypes = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
} as const;
