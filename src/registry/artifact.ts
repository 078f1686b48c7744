import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Artifact } from '../model/artifact.js';
import { MediaTypes, type Blob } from '../model/image.js';
import { UserError } from '../util/errors.js';
import { pushBlob } from './blob-upload.js';
import { describeFailure, type RegistryClient } from './client.js';
import { pushManifest } from './manifest-push.js';
import type { RetryPolicy } from './retry.js';
import { firstHeader, type HttpResponse } from './transport.js';

/**
 * Artifacts kept under a tag (nix2oci's registry cache index): pushed whole, and fetched back with
 * every size bounded, since whoever can push to the repository can put anything under the tag.
 * Attachments, which are found from their subject instead, go through `referrers.ts`.
 */
/** An artifact's manifest is small; a larger one is not ours. */
const MAX_MANIFEST_BYTES = 64 << 10;

/** A fetched artifact that is not what it should be (not JSON, another type, too big, damaged). */
export class ArtifactProblem extends Error {}

/** The blobs of artifacts (their empty config and document), each once. */
export function artifactBlobs(artifacts: Artifact[]): Blob[] {
  const byDigest = new Map<string, Blob>();
  for (const artifact of artifacts) {
    for (const { descriptor, bytes } of artifact.blobs) {
      if (!byDigest.has(descriptor.digest)) byDigest.set(descriptor.digest, { descriptor, open: (start = 0) => Readable.from([bytes.subarray(start)]) });
    }
  }
  return [...byDigest.values()];
}

/** Pushes the artifact's blobs (the empty config, the document) and its manifest under `tag`; returns the manifest digest. */
export async function pushArtifact(client: RegistryClient, repository: string, tag: string, artifact: Artifact, retry: RetryPolicy): Promise<string> {
  for (const blob of artifactBlobs([artifact])) {
    await pushBlob(client, blob, { repository, mountFrom: [], chunkSize: Math.max(blob.descriptor.size, 1), retry, progress: { transferred() {}, retrying() {} } });
  }
  return pushManifest(client, repository, { manifestBytes: artifact.manifestBytes, manifestMediaType: MediaTypes.ociManifest }, [tag]);
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

