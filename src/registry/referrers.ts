import { MediaTypes, type Descriptor } from '../model/image.js';
import { referrersIndex, referrersTag, type Artifact } from '../model/artifact.js';
import { UserError } from '../util/errors.js';
import { describeFailure, type RegistryClient } from './client.js';
import { putManifest } from './manifest-push.js';
import { firstHeader, readText } from './transport.js';

/** Largest referrers index read back from a registry. */
const MAX_INDEX = 4 << 20;

/** How the artifacts were made findable from their subject. */
export type ReferrersOutcome = 'referrers-api' | 'referrers-tag';

/**
 * Pushes artifact manifests about `subject` (their blobs must be in the repository already) and makes
 * them findable from it, as distribution-spec 1.1 says: a registry with the referrers API says so by
 * answering each PUT with `OCI-Subject`, and indexes them itself. One without it (distribution 2.8 and
 * most registries of its age) gets the referrers tag schema: the image index under `sha256-<hex>` is
 * read, the artifacts added to what it lists (others' referrers are kept), and put back.
 */
export async function pushReferrers(client: RegistryClient, repository: string, subject: Descriptor, artifacts: Artifact[]): Promise<ReferrersOutcome> {
  let indexedByRegistry = true;
  for (const artifact of artifacts) {
    const headers = await putManifest(client, repository, artifact.descriptor.digest, artifact.manifestBytes, artifact.descriptor.mediaType);
    if (firstHeader(headers, 'oci-subject') !== subject.digest) indexedByRegistry = false;
  }
  if (indexedByRegistry) return 'referrers-api';
  const tag = referrersTag(subject.digest);
  const listed = await readReferrersTag(client, repository, tag);
  const merged = [...listed.filter((d) => !artifacts.some((a) => a.descriptor.digest === d.digest)), ...artifacts.map((a) => a.descriptor)];
  await putManifest(client, repository, tag, referrersIndex(merged), MediaTypes.ociIndex);
  return 'referrers-tag';
}

/** The referrers a registry knows for `digest`: its referrers API when it has one, else the referrers tag. */
export async function listReferrers(client: RegistryClient, repository: string, digest: string): Promise<Array<Descriptor & { artifactType: string }>> {
  const res = await request(client, { method: 'GET', url: `/v2/${repository}/referrers/${digest}`, headers: { accept: MediaTypes.ociIndex }, retry: true });
  if (res.status === 200) return parseIndex(await readText(res.body, MAX_INDEX), `${client.registry}/${repository} referrers of ${digest}`);
  await res.body.dump();
  if (res.status !== 404) throw new UserError(`${client.registry}/${repository}: listing the referrers of ${digest} failed: ${res.status}`);
  return readReferrersTag(client, repository, referrersTag(digest));
}

/** What the referrers tag lists (nothing when the tag does not exist). */
async function readReferrersTag(client: RegistryClient, repository: string, tag: string): Promise<Array<Descriptor & { artifactType: string }>> {
  const res = await request(client, { method: 'GET', url: `/v2/${repository}/manifests/${tag}`, headers: { accept: MediaTypes.ociIndex }, retry: true });
  if (res.status === 404) {
    await res.body.dump();
    return [];
  }
  if (res.status !== 200) throw new UserError(`${client.registry}/${repository}:${tag}: reading the referrers tag failed: ${await describeFailure(res, client.secrets)}`);
  return parseIndex(await readText(res.body, MAX_INDEX), `${client.registry}/${repository}:${tag}`);
}

async function request(client: RegistryClient, req: Parameters<RegistryClient['request']>[0]) {
  try {
    return await client.request(req);
  } catch (err) {
    throw client.networkError(err);
  }
}

function parseIndex(text: string, where: string): Array<Descriptor & { artifactType: string }> {
  let index: { manifests?: unknown };
  try {
    index = JSON.parse(text) as typeof index;
  } catch {
    throw new UserError(`${where} is not an image index (not JSON)`);
  }
  if (!Array.isArray(index.manifests)) throw new UserError(`${where} is not an image index (no manifests)`);
  return index.manifests.flatMap((m: unknown) => {
    const d = m as Partial<Descriptor & { artifactType: string }>;
    if (typeof d.mediaType !== 'string' || typeof d.digest !== 'string' || typeof d.size !== 'number') return [];
    return [{ mediaType: d.mediaType, digest: d.digest, size: d.size, artifactType: typeof d.artifactType === 'string' ? d.artifactType : '', ...(d.annotations && { annotations: d.annotations }) }];
  });
}
