import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Blob } from '../model/image.js';
import { MediaTypes } from '../model/image.js';
import { UserError } from '../util/errors.js';
import { pushBlob } from './blob-upload.js';
import { describeFailure, type RegistryClient } from './client.js';
import { pushManifest } from './manifest-push.js';
import type { RetryPolicy } from './retry.js';
import { firstHeader, type HttpResponse } from './transport.js';

/**
 * OCI 1.1 artifacts: a manifest with its own `artifactType`, the empty config, and one blob of data,
 * under a tag. Used for nix2oci's registry cache index; anything else nix2oci keeps beside an image
 * (an SBOM, an attestation) fits the same two functions.
 */
export const EMPTY_CONFIG = {
  mediaType: 'application/vnd.oci.empty.v1+json',
  digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a',
  size: 2,
} as const;
const EMPTY_CONFIG_BYTES = Buffer.from('{}');
/** An artifact's manifest is small; a larger one is not ours. */
const MAX_MANIFEST_BYTES = 64 << 10;

export interface Artifact {
  artifactType: string;
  /** The data blob's media type and bytes. */
  mediaType: string;
  bytes: Buffer;
  annotations?: Record<string, string>;
}

/** A fetched artifact that is not what it should be (not JSON, another type, too big, damaged). */
export class ArtifactProblem extends Error {}

/** The manifest of an artifact, byte for byte as pushed (keys in a fixed order). */
export function artifactManifest(artifact: Artifact): Buffer {
  const digest = `sha256:${createHash('sha256').update(artifact.bytes).digest('hex')}`;
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaTypes.ociManifest,
      artifactType: artifact.artifactType,
      config: EMPTY_CONFIG,
      layers: [{ mediaType: artifact.mediaType, digest, size: artifact.bytes.length }],
      ...(artifact.annotations && { annotations: artifact.annotations }),
    }),
  );
}

/** Pushes the empty config, the data blob and the manifest under `tag`; returns the manifest digest. */
export async function pushArtifact(client: RegistryClient, repository: string, tag: string, artifact: Artifact, retry: RetryPolicy): Promise<string> {
  const manifestBytes = artifactManifest(artifact);
  const layer = (JSON.parse(manifestBytes.toString('utf8')) as { layers: Blob['descriptor'][] }).layers[0]!;
  for (const blob of [bufferBlob(EMPTY_CONFIG, EMPTY_CONFIG_BYTES), bufferBlob(layer, artifact.bytes)]) {
    await pushBlob(client, blob, { repository, mountFrom: [], chunkSize: Math.max(blob.descriptor.size, 1), retry, progress: { transferred() {}, retrying() {} } });
  }
  return pushManifest(client, repository, { manifestBytes, manifestMediaType: MediaTypes.ociManifest }, [tag]);
}

/**
 * The artifact under `tag`, or null when the tag does not exist. Throws ArtifactProblem when what is
 * there is not an artifact of `artifactType` with one blob of at most `maxBytes` that matches its
 * digest; a registry that refuses or fails throws UserError.
 */
export async function fetchArtifact(
  client: RegistryClient,
  repository: string,
  tag: string,
  artifactType: string,
  maxBytes: number,
): Promise<{ bytes: Buffer; manifestDigest: string } | null> {
  const where = `${client.registry}/${repository}:${tag}`;
  const res = await get(client, `/v2/${repository}/manifests/${tag}`, { accept: MediaTypes.ociManifest });
  if (res.status === 404) {
    await res.body.dump();
    return null;
  }
  if (res.status !== 200) throw new UserError(`reading ${where} failed: ${await describeFailure(res, client.secrets)}`);
  const manifestBytes = await readBounded(res, MAX_MANIFEST_BYTES, `the manifest of ${where}`);
  const manifestDigest = `sha256:${createHash('sha256').update(manifestBytes).digest('hex')}`;
  let manifest: unknown;
  try {
    manifest = JSON.parse(manifestBytes.toString('utf8'));
  } catch {
    throw new ArtifactProblem(`the manifest of ${where} is not JSON`);
  }
  const m = manifest as { artifactType?: unknown; layers?: unknown };
  if (typeof manifest !== 'object' || manifest === null || m.artifactType !== artifactType) {
    throw new ArtifactProblem(`${where} is not a ${artifactType} artifact`);
  }
  const layers = Array.isArray(m.layers) ? (m.layers as Array<{ digest?: unknown; size?: unknown }>) : [];
  const blob = layers[0];
  if (layers.length !== 1 || typeof blob?.digest !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(blob.digest) || !Number.isSafeInteger(blob.size)) {
    throw new ArtifactProblem(`${where} does not name exactly one blob by sha256 digest and size`);
  }
  const size = blob.size as number;
  if (size < 0 || size > maxBytes) throw new ArtifactProblem(`${where} names a blob of ${size} bytes (at most ${maxBytes} are read)`);
  const data = await get(client, `/v2/${repository}/blobs/${blob.digest}`);
  if (data.status !== 200) throw new ArtifactProblem(`blob ${blob.digest} of ${where} cannot be read: ${await describeFailure(data, client.secrets)}`);
  const bytes = await readBounded(data, size, `blob ${blob.digest} of ${where}`);
  if (bytes.length !== size || `sha256:${createHash('sha256').update(bytes).digest('hex')}` !== blob.digest) {
    throw new ArtifactProblem(`blob ${blob.digest} of ${where} does not match its digest and size`);
  }
  return { bytes, manifestDigest };
}

async function get(client: RegistryClient, url: string, headers: Record<string, string> = {}): Promise<HttpResponse> {
  try {
    return await client.request({ method: 'GET', url, headers, retry: true });
  } catch (err) {
    throw client.networkError(err);
  }
}

/** At most `limit` bytes of a body; more (a hostile or broken registry) is a problem, and the rest is not read. */
async function readBounded(res: HttpResponse, limit: number, what: string): Promise<Buffer> {
  const declared = Number(firstHeader(res.headers, 'content-length') ?? NaN);
  if (declared > limit) {
    res.body.destroy();
    throw new ArtifactProblem(`${what} is ${declared} bytes, more than the ${limit} nix2oci reads`);
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res.body) {
    size += (chunk as Buffer).length;
    if (size > limit) {
      res.body.destroy();
      throw new ArtifactProblem(`${what} is more than the ${limit} bytes nix2oci reads`);
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

function bufferBlob(descriptor: Blob['descriptor'], bytes: Buffer): Blob {
  return { descriptor, open: (start = 0) => Readable.from([bytes.subarray(start)]) };
}
