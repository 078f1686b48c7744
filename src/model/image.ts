import type { Readable } from 'node:stream';
import { piecesStream, type BytePiece } from '../util/pieces.js';

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
   * The bytes were taken from a cache without being read. Whoever reads them checks them against the
   * digest in the same pass; when they differ, `repair` drops what served them and makes the blob again
   * (the same bytes: layers are deterministic), and the reader uses the pieces it returns.
   */
  unverified?: { repair(): Promise<BytePiece[]> };
  /**
   * `HOST/REPOSITORY` where this build has just found the blob with its digest and size (the registry
   * cache's check, or a mount there): a push to that repository skips asking again. The registry still
   * refuses a manifest naming a blob it lacks.
   */
  foundIn?: string;
  /** A fresh stream of the blob's bytes from `start` (default 0) to the end. */
  open(start?: number): Readable;
}

/** A layer's compression, as its media type says it. */
export type Compression = 'gzip' | 'zstd' | 'none';

/**
 * The one record of a layer, from the writer or the cache that made it, through assembly, to every
 * output and the registry: its blob, its diffID, and what it holds.
 */
export interface Layer extends Blob {
  /** `sha256:<hex>` of the uncompressed tar. */
  diffId: string;
  /** Bytes of the uncompressed tar (unknown for some layers read from archives). */
  uncompressedSize?: number;
  compression: Compression;
  /** Store paths (or wheel file names, or `image-root`) this layer holds, sorted; for `inspect`. */
  contents: string[];
}

/** A layer's compression from its media type (OCI's or Docker's). */
export function compressionOf(mediaType: string): Compression {
  return /gzip$/.test(mediaType) ? 'gzip' : /zstd$/.test(mediaType) ? 'zstd' : 'none';
}

/** The OCI media type of a layer of this compression. */
export function ociLayerMediaType(compression: Compression): string {
  return compression === 'gzip' ? MediaTypes.ociLayerGzip : compression === 'zstd' ? MediaTypes.ociLayerZstd : MediaTypes.ociLayer;
}

/** A layer whose bytes are `pieces` (local files and small buffers), with the OCI media type of its compression. */
export function layerOf(fields: {
  digest: string;
  size: number;
  diffId: string;
  uncompressedSize: number;
  compression: Compression;
  pieces: BytePiece[];
  contents: string[];
  unverified?: Blob['unverified'];
}): Layer {
  return {
    descriptor: { mediaType: ociLayerMediaType(fields.compression), digest: fields.digest, size: fields.size },
    diffId: fields.diffId,
    uncompressedSize: fields.uncompressedSize,
    compression: fields.compression,
    contents: [...new Set(fields.contents)].sort(),
    pieces: fields.pieces,
    ...(fields.unverified && { unverified: fields.unverified }),
    // `this`, not a captured record: a copy with another descriptor, or repaired pieces, reads its own.
    open(this: Blob, start = 0) {
      return piecesStream(this.pieces ?? fields.pieces, start);
    },
  };
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
  /**
   * Artifacts about the image (SBOMs, provenance) whose subject is its manifest: an OCI layout lists them
   * in index.json beside it, a push uploads them as referrers. A docker-archive has no place for them.
   */
  attachments?: Artifact[];
}

/**
 * An OCI 1.1 artifact: a manifest whose `artifactType` says what it carries, whose config is the empty
 * descriptor, and whose one layer is the document. An attachment (an SBOM or provenance of an image)
 * has the image manifest as its `subject`, and is found through the referrers API or the referrers tag
 * schema; the registry cache's index has none, and is found by its tag.
 */

export interface Artifact {
  artifactType: string;
  /** The manifest exactly as stored and pushed. */
  manifestBytes: Buffer;
  /** The manifest's descriptor, with `artifactType`, as an index lists it. */
  descriptor: Descriptor & { artifactType: string };
  /** The blobs the manifest names: the empty config, then the document. */
  blobs: { descriptor: Descriptor; bytes: Buffer }[];
}

export const MediaTypes = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
} as const;
