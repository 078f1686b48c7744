import { statSync } from 'node:fs';
import { isStorePath, storePathName } from '../nix/store-path.js';
import { checkPiecesLength } from '../util/pieces.js';
import { buildConfig, type HistoryEntry, type ImageConfigSpec } from './config.js';
import type { OutputFormat } from './formats.js';
import type { Descriptor, Image, Layer } from './image.js';
import { configMediaType, layerMediaType, manifestMediaType, serializeManifest, sha256Digest, type ManifestFormat } from './manifest.js';
import { normalizeTag } from './reference.js';

/** Layer descriptor annotation: what the layer holds (store paths, wheel names, `image-root`), sorted, one per line. */
export const CONTENTS_ANNOTATION = 'dev.nix2oci.contents';
/** Layer descriptor annotation: the uncompressed tar's size in bytes, so `inspect` need not decompress. */
export const UNCOMPRESSED_SIZE_ANNOTATION = 'dev.nix2oci.uncompressed-size';
/**
 * Above this many bytes the contents annotation is left out (registries cap manifests at a few MiB);
 * `inspect` then lists the layer's store paths by reading its tar.
 */
export const MAX_CONTENTS_ANNOTATION = 64 * 1024;

export interface AssembleOptions {
  /** Bottom layer first. */
  layers: Layer[];
  config: ImageConfigSpec;
  /** The config's `created` and its history's; from SOURCE_DATE_EPOCH. */
  created: Date;
  /** `NAME[:TAG]`; `:latest` is added where the tag is missing. */
  tags: string[];
  /** Media types to use; by default Docker's for a docker-archive, OCI's otherwise. */
  manifestFormat?: ManifestFormat;
  /** The output the image is for: picks the manifest format and which warnings apply. */
  format?: OutputFormat;
}

/**
 * Builds config and manifest around layer blobs already on disk. Pure apart from checking each blob
 * file's size: the same inputs give the same manifest bytes, and so the same image digest.
 */
export function assembleImage(options: AssembleOptions): { image: Image; warnings: string[] } {
  const format: ManifestFormat = options.manifestFormat ?? (options.format === 'docker-archive' ? 'docker' : 'oci');
  const warnings = configWarnings(options.config, options.format ?? (format === 'docker' ? 'docker-archive' : 'oci-archive'));

  const layers: Layer[] = options.layers.map((layer) => {
    if (layer.pieces) checkBlobFile(layer);
    const listed = layer.contents.join('\n');
    // Docker's schema 2 has no descriptor annotations; the contents then live only in `Layer.contents`.
    const descriptor: Descriptor = {
      mediaType: layerMediaType(format, layer.compression),
      digest: layer.descriptor.digest,
      size: layer.descriptor.size,
      ...(format === 'oci' && {
        annotations: {
          ...(listed !== '' && Buffer.byteLength(listed) <= MAX_CONTENTS_ANNOTATION && { [CONTENTS_ANNOTATION]: listed }),
          [UNCOMPRESSED_SIZE_ANNOTATION]: String(layer.uncompressedSize),
        },
      }),
    };
    return { ...layer, descriptor };
  });

  const history: HistoryEntry[] = layers.map((l) => ({ createdBy: 'nix2oci', comment: summarize(l.contents) }));
  const configBytes = buildConfig(
    options.config,
    layers.map((l) => l.diffId),
    { created: options.created, history },
  );
  const configDescriptor: Descriptor = {
    mediaType: configMediaType(format),
    digest: sha256Digest(configBytes),
    size: configBytes.length,
  };
  const manifestBytes = serializeManifest(
    format,
    configDescriptor,
    layers.map((l) => l.descriptor),
  );
  const tags = [...new Set(options.tags.map(normalizeTag))];
  return {
    image: { manifestBytes, manifestMediaType: manifestMediaType(format), configBytes, configDescriptor, layers, tags },
    warnings,
  };
}

/** Image digest: the sha256 of the manifest bytes. */
export function manifestDigest(image: Image): string {
  return sha256Digest(image.manifestBytes);
}

/**
 * What an output format loses of the config. Docker reads `Healthcheck` from any image config, but
 * podman (checked with 4.3) only honours it in images with Docker media types.
 */
export function configWarnings(config: ImageConfigSpec, format: OutputFormat): string[] {
  if (config.healthcheck !== undefined && format !== 'docker-archive') {
    return [
      `the healthcheck is kept in the image config, which Docker honours, but podman ignores it in ${format} images; use --format docker-archive for podman`,
    ];
  }
  return [];
}

function summarize(contents: string[]): string {
  const names = [...new Set(contents)].sort().map((c) => (isStorePath(c) ? storePathName(c) : c));
  if (names.length <= 3) return names.join(', ');
  return `${names.slice(0, 3).join(', ')} and ${names.length - 3} more`;
}

function checkBlobFile(layer: Layer): void {
  const { digest, size } = layer.descriptor;
  checkPiecesLength(layer.pieces!, size, digest);
  for (const piece of layer.pieces!) {
    if ('bytes' in piece) continue;
    const fileSize = statSync(piece.file).size;
    if (fileSize < piece.start + piece.length) throw new Error(`layer blob file ${piece.file} is ${fileSize} bytes, shorter than its piece of ${digest}`);
  }
}
