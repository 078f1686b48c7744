import { createHash } from 'node:crypto';
import type { Compression } from './image.js';
import { MediaTypes, ociLayerMediaType, type Descriptor } from './image.js';

/** Which media types an image uses: OCI's, or Docker's schema 2 (what a docker-archive implies). */
export type ManifestFormat = 'oci' | 'docker';

export function sha256Digest(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** The hex part of a `sha256:<hex>` digest, checked (it becomes a file name). */
export function digestHex(digest: string): string {
  const match = /^sha256:([0-9a-f]{64})$/.exec(digest);
  if (!match) throw new Error(`not a sha256 digest: ${digest}`);
  return match[1]!;
}

export function manifestMediaType(format: ManifestFormat): string {
  return format === 'oci' ? MediaTypes.ociManifest : MediaTypes.dockerManifest;
}

export function configMediaType(format: ManifestFormat): string {
  return format === 'oci' ? MediaTypes.ociConfig : MediaTypes.dockerConfig;
}

export function layerMediaType(format: ManifestFormat, compression: Compression): string {
  if (format === 'oci') return ociLayerMediaType(compression);
  // Docker's schema 2 has no zstd layer type; builds refuse zstd for a docker-archive up front.
  if (compression === 'zstd') throw new Error('zstd layers cannot be described in a Docker manifest');
  return compression === 'gzip' ? MediaTypes.dockerLayerGzip : MediaTypes.dockerLayer;
}

/** A descriptor as JSON with a fixed key order and sorted annotations. */
export function descriptorJson(d: Descriptor): Record<string, unknown> {
  const keys = d.annotations ? Object.keys(d.annotations).sort() : [];
  return {
    mediaType: d.mediaType,
    digest: d.digest,
    size: d.size,
    ...(keys.length > 0 && { annotations: Object.fromEntries(keys.map((k) => [k, d.annotations![k]])) }),
  };
}

/**
 * The image manifest bytes. Docker's schema 2 defines no annotations, and a docker-archive could not
 * carry them anyway, so they are written for OCI manifests only: reading a docker-archive back then
 * gives the very same manifest.
 */
export function serializeManifest(format: ManifestFormat, config: Descriptor, layers: Descriptor[]): Buffer {
  const strip = (d: Descriptor): Descriptor => (format === 'oci' ? d : { mediaType: d.mediaType, digest: d.digest, size: d.size });
  const manifest = {
    schemaVersion: 2,
    mediaType: manifestMediaType(format),
    config: descriptorJson(strip(config)),
    layers: layers.map((l) => descriptorJson(strip(l))),
  };
  return Buffer.from(JSON.stringify(manifest), 'utf8');
}

/** Which format a manifest media type belongs to, or undefined for one this tool does not handle. */
export function formatOfManifest(mediaType: string): ManifestFormat | undefined {
  if (mediaType === MediaTypes.ociManifest) return 'oci';
  if (mediaType === MediaTypes.dockerManifest) return 'docker';
  return undefined;
}
