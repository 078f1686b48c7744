import { UserError } from '../util/errors.js';
import { MediaTypes, type Artifact, type Descriptor } from './image.js';
import { descriptorJson, sha256Digest } from './manifest.js';

export type { Artifact } from './image.js';

/** The empty config every artifact manifest names (image-spec 1.1 "guidance for an empty descriptor"). */
export const EMPTY_CONFIG = Buffer.from('{}', 'utf8');
export const EMPTY_CONFIG_DESCRIPTOR: Descriptor = { mediaType: 'application/vnd.oci.empty.v1+json', digest: sha256Digest(EMPTY_CONFIG), size: EMPTY_CONFIG.length };

/** Media types of the documents nix2oci attaches. */
export const ArtifactTypes = {
  spdx: 'application/spdx+json',
  cyclonedx: 'application/vnd.cyclonedx+json',
  inToto: 'application/vnd.in-toto+json',
} as const;

/** Annotation on an artifact's index entry and manifest: what it is, for whoever lists an index. */
export const ATTACHMENT_ANNOTATION = 'dev.nix2oci.attachment';

/**
 * An artifact manifest carrying `document` (of media type `documentType`, else `artifactType`), about
 * `subject` when given. Bytes depend only on the arguments: the same document about the same image
 * gives the same manifest digest.
 */
export function artifactOf(options: {
  artifactType: string;
  document: Buffer;
  documentType?: string;
  subject?: Descriptor;
  annotations?: Record<string, string>;
}): Artifact {
  const layer: Descriptor = { mediaType: options.documentType ?? options.artifactType, digest: sha256Digest(options.document), size: options.document.length };
  const manifest = {
    schemaVersion: 2,
    mediaType: MediaTypes.ociManifest,
    artifactType: options.artifactType,
    config: descriptorJson(EMPTY_CONFIG_DESCRIPTOR),
    layers: [descriptorJson(layer)],
    ...(options.subject && { subject: descriptorJson({ mediaType: options.subject.mediaType, digest: options.subject.digest, size: options.subject.size }) }),
    ...(options.annotations && { annotations: sortedRecord(options.annotations) }),
  };
  const manifestBytes = Buffer.from(JSON.stringify(manifest), 'utf8');
  return {
    artifactType: options.artifactType,
    manifestBytes,
    descriptor: {
      mediaType: MediaTypes.ociManifest,
      digest: sha256Digest(manifestBytes),
      size: manifestBytes.length,
      artifactType: options.artifactType,
      ...(options.annotations && { annotations: sortedRecord(options.annotations) }),
    },
    blobs: [
      { descriptor: EMPTY_CONFIG_DESCRIPTOR, bytes: EMPTY_CONFIG },
      { descriptor: layer, bytes: options.document },
    ],
  };
}

/** A descriptor with `artifactType` as an index lists it (image-spec 1.1), keys in a fixed order. */
export function artifactDescriptorJson(d: Descriptor & { artifactType: string }): Record<string, unknown> {
  const { annotations, ...rest } = descriptorJson(d);
  return { ...rest, artifactType: d.artifactType, ...(annotations !== undefined && { annotations }) };
}

/**
 * An image index listing `artifacts` (the referrers API's answer, and what the referrers tag schema
 * stores under `sha256-<hex>`), in the given order.
 */
export function referrersIndex(artifacts: Array<Descriptor & { artifactType: string }>): Buffer {
  return Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests: artifacts.map(artifactDescriptorJson) }), 'utf8');
}

/** The referrers tag schema's tag for a manifest digest: `sha256-<hex>`. */
export function referrersTag(digest: string): string {
  return digest.replace(':', '-');
}

function sortedRecord(record: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.keys(record).sort().map((k) => [k, record[k]!]));
}

/** What an artifact manifest names; `where` is told in the one-line error when it is not one. */
export function parseArtifactManifest(bytes: Buffer, where: string): { artifactType: string; config: Descriptor; layers: Descriptor[]; subject: Descriptor } {
  let doc: { artifactType?: unknown; config?: Partial<Descriptor>; layers?: unknown; subject?: Partial<Descriptor> };
  try {
    doc = JSON.parse(bytes.toString('utf8')) as typeof doc;
  } catch {
    throw new UserError(`${where}: the artifact manifest is not JSON`);
  }
  const descriptor = (d: unknown): d is Descriptor =>
    typeof d === 'object' && d !== null && typeof (d as Descriptor).mediaType === 'string' && /^sha256:[0-9a-f]{64}$/.test(String((d as Descriptor).digest)) && Number.isSafeInteger((d as Descriptor).size);
  const layers = Array.isArray(doc.layers) ? doc.layers : [];
  if (!descriptor(doc.config) || !descriptor(doc.subject) || !layers.every(descriptor)) throw new UserError(`${where}: not an artifact manifest (a config, layers and a subject)`);
  const artifactType = typeof doc.artifactType === 'string' ? doc.artifactType : doc.config.mediaType;
  return { artifactType, config: pick(doc.config), layers: layers.map(pick), subject: pick(doc.subject) };
}

function pick(d: Descriptor): Descriptor {
  return { mediaType: d.mediaType, digest: d.digest, size: d.size };
}
