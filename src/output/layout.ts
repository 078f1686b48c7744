import type { Blob, Descriptor, Image } from '../model/image.js';
import { MediaTypes } from '../model/image.js';
import { artifactDescriptorJson } from '../model/artifact.js';
import { descriptorJson, digestHex, sha256Digest } from '../model/manifest.js';
import { qualifiedName } from '../model/reference.js';

/**
 * The files of an output, independent of whether they go into a tar or a directory.
 * Names are relative, directories without a trailing `/`; every writer takes them in the same order.
 */
export type ArchiveEntry =
  | { kind: 'directory'; name: string }
  | { kind: 'bytes'; name: string; bytes: Buffer }
  | { kind: 'blob'; name: string; blob: Blob };

/** Index annotation podman, skopeo and the OCI spec read as the image's name. */
export const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';
/** Index annotation containerd (and so containerd-backed `docker load`) reads as the full image name. */
export const CONTAINERD_NAME_ANNOTATION = 'io.containerd.image.name';

/** Docker's `manifest.json` in an archive: one entry per image. */
export interface DockerArchiveManifestEntry {
  Config: string;
  RepoTags: string[] | null;
  Layers: string[];
}

/** Where a blob lies in an OCI layout. */
export function blobPath(digest: string): string {
  return `blobs/sha256/${digestHex(digest)}`;
}

/**
 * The shape of an archive: what comes before the layers, each layer's member name, and what comes after
 * them (written last, since the config and manifest name every layer's digests). Layers appear in the
 * image's order, each blob once, so a layer can be written straight into its place as it is made.
 */
export interface ArchiveLayout {
  leading: ArchiveEntry[];
  layerName(layer: Blob): string;
  trailing(image: Image): ArchiveEntry[];
}

/**
 * An OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) that also carries Docker's
 * `manifest.json` pointing at the same blob files, so `docker load` and `podman load` both accept it
 * (Docker 25 writes the same shape with `docker save`).
 *
 * `org.opencontainers.image.ref.name` holds the whole name (`nix2oci/demo:latest`): podman 4.3 and skopeo
 * take the image name from it as written; containerd reads `io.containerd.image.name` (fully qualified).
 * An index holds one descriptor per tag, all naming the same manifest.
 */
const OCI_LAYOUT: ArchiveLayout = {
  leading: [
    { kind: 'directory', name: 'blobs' },
    { kind: 'directory', name: 'blobs/sha256' },
  ],
  layerName: (layer) => blobPath(layer.descriptor.digest),
  trailing(image) {
    const manifestDescriptor: Descriptor = {
      mediaType: image.manifestMediaType,
      digest: sha256Digest(image.manifestBytes),
      size: image.manifestBytes.length,
    };
    const platform = platformOf(image.configBytes);
    const named = image.tags.map((tag) => ({
      ...manifestDescriptor,
      annotations: { [CONTAINERD_NAME_ANNOTATION]: qualifiedName(tag), [REF_NAME_ANNOTATION]: tag },
    }));
    const attachments = image.attachments ?? [];
    const index = {
      schemaVersion: 2,
      mediaType: MediaTypes.ociIndex,
      manifests: [
        ...(named.length > 0 ? named : [manifestDescriptor]).map((d) => ({
          ...descriptorJson(d),
          ...(platform && { platform }),
        })),
        // Artifacts after the image, without a name: tools that pick an image by name find only the image.
        ...attachments.map((a) => artifactDescriptorJson(a.descriptor)),
      ],
    };
    return unique([
      ...attachments.flatMap((a): ArchiveEntry[] => [
        ...a.blobs.map((b): ArchiveEntry => ({ kind: 'bytes', name: blobPath(b.descriptor.digest), bytes: b.bytes })),
        { kind: 'bytes', name: blobPath(a.descriptor.digest), bytes: a.manifestBytes },
      ]),
      { kind: 'bytes', name: blobPath(image.configDescriptor.digest), bytes: image.configBytes },
      { kind: 'bytes', name: blobPath(manifestDescriptor.digest), bytes: image.manifestBytes },
      { kind: 'bytes', name: 'index.json', bytes: json(index) },
      {
        kind: 'bytes',
        name: 'manifest.json',
        bytes: dockerManifestJson(
          blobPath(image.configDescriptor.digest),
          image.tags,
          image.layers.map((l) => blobPath(l.descriptor.digest)),
        ),
      },
      { kind: 'bytes', name: 'oci-layout', bytes: json({ imageLayoutVersion: '1.0.0' }) },
    ]);
  },
};

/**
 * Docker's archive format as `docker load` has read it since 1.10: `manifest.json`, the config as
 * `<hex>.json` and each layer as `<hex>.tar` (or `.tar.gz`, which docker and podman decompress on load).
 * It has no manifest: readers rebuild one from the config and the layer files.
 */
const DOCKER_ARCHIVE: ArchiveLayout = {
  leading: [],
  layerName: (layer) => `${digestHex(layer.descriptor.digest)}${layer.descriptor.mediaType.endsWith('gzip') ? '.tar.gz' : '.tar'}`,
  trailing(image) {
    const configName = `${digestHex(image.configDescriptor.digest)}.json`;
    return [
      { kind: 'bytes', name: configName, bytes: image.configBytes },
      { kind: 'bytes', name: 'manifest.json', bytes: dockerManifestJson(configName, image.tags, image.layers.map((l) => DOCKER_ARCHIVE.layerName(l))) },
    ];
  },
};

export function archiveLayout(format: 'oci-archive' | 'docker-archive'): ArchiveLayout {
  return format === 'oci-archive' ? OCI_LAYOUT : DOCKER_ARCHIVE;
}

/** Every entry of an archive, in the order it is written: leading entries, each layer once, trailing entries. */
export function archiveEntries(image: Image, format: 'oci-archive' | 'docker-archive'): ArchiveEntry[] {
  const layout = archiveLayout(format);
  const layers = unique(image.layers.map((layer): ArchiveEntry => ({ kind: 'blob', name: layout.layerName(layer), blob: layer })));
  return [...layout.leading, ...layers, ...layout.trailing(image)];
}

/** The files of an OCI layout (for a directory, or an oci-archive). */
export function ociLayoutEntries(image: Image): ArchiveEntry[] {
  return archiveEntries(image, 'oci-archive');
}

/** The files of a docker-archive. */
export function dockerArchiveEntries(image: Image): ArchiveEntry[] {
  return archiveEntries(image, 'docker-archive');
}

function dockerManifestJson(config: string, tags: string[], layers: string[]): Buffer {
  const entry: DockerArchiveManifestEntry = { Config: config, RepoTags: tags, Layers: layers };
  return json([entry]);
}

function platformOf(configBytes: Buffer): { architecture: string; os: string; variant?: string } | undefined {
  try {
    const config = JSON.parse(configBytes.toString('utf8')) as { architecture?: unknown; os?: unknown; variant?: unknown };
    if (typeof config.architecture !== 'string' || typeof config.os !== 'string') return undefined;
    return {
      architecture: config.architecture,
      os: config.os,
      ...(typeof config.variant === 'string' && { variant: config.variant }),
    };
  } catch {
    return undefined;
  }
}

function json(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value), 'utf8');
}

/** Each name once, the first kept: a layer used twice in an image is one blob. */
function unique(entries: ArchiveEntry[]): ArchiveEntry[] {
  const byName = new Map<string, ArchiveEntry>();
  for (const entry of entries) if (!byName.has(entry.name)) byName.set(entry.name, entry);
  return [...byName.values()];
}
