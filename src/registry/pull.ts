import type { Agent } from 'undici';
import { parseArtifactManifest, type Artifact } from '../model/artifact.js';
import { MediaTypes, type Image } from '../model/image.js';
import { sha256Digest } from '../model/manifest.js';
import { formatReference, registryEndpoint, type ImageReference } from '../model/reference.js';
import { UserError } from '../util/errors.js';
import { describeFailure, RegistryClient } from './client.js';
import { credentialSecrets, findCredentials } from './credentials.js';
import { listReferrers } from './referrers.js';
import { DEFAULT_RETRY_POLICY } from './retry.js';
import { Secrets } from './secrets.js';
import { loadTlsOptions } from './tls.js';
import { createAgent } from './transport.js';

/** Largest manifest read (registries refuse larger ones), and largest document (an SBOM of a large closure). */
const MAX_MANIFEST = 4 << 20;
const MAX_DOCUMENT = 256 << 20;

export interface PullOptions {
  creds?: string;
  authfile?: string;
  certDir?: string;
  tlsVerify?: boolean;
  env?: NodeJS.ProcessEnv;
}

/**
 * An image's manifest and its attachments (the artifacts whose subject it is, found with the referrers
 * API or the referrers tag), read from a registry. Layers are not fetched: the result's layers carry
 * only their descriptors and the contents their annotations name, enough for an SBOM.
 */
export async function pullManifestAndAttachments(ref: ImageReference, options: PullOptions = {}): Promise<Image> {
  const secrets = new Secrets();
  let agent: Agent | undefined;
  try {
    const env = options.env ?? process.env;
    const credentials = await findCredentials(ref.registry, ref.repository, { creds: options.creds, authfile: options.authfile, env });
    secrets.add(...credentialSecrets(credentials));
    const tlsVerify = options.tlsVerify ?? true;
    const tls = await loadTlsOptions(ref.registry, { tlsVerify, certDir: options.certDir }, env);
    agent = createAgent({ tls, connections: 4, stallTimeoutMs: 60_000 });
    const client = await RegistryClient.connect({
      registry: ref.registry,
      endpoint: registryEndpoint(ref.registry),
      agent,
      credentials,
      scopes: [`repository:${ref.repository}:pull`],
      tlsVerify,
      retry: DEFAULT_RETRY_POLICY,
      secrets,
    });
    const reference = ref.digest ?? ref.tag ?? 'latest';
    const manifest = await getBytes(client, `/v2/${ref.repository}/manifests/${reference}`, MAX_MANIFEST, `${formatReference(ref, ref.tag, ref.digest)}`, [
      MediaTypes.ociManifest,
      MediaTypes.dockerManifest,
    ]);
    const digest = sha256Digest(manifest.bytes);
    if (ref.digest && ref.digest !== digest) throw new UserError(`${formatReference(ref)}: the registry sent a manifest whose digest is ${digest}, not ${ref.digest}`);
    const doc = JSON.parse(manifest.bytes.toString('utf8')) as { mediaType?: string; config?: unknown; layers?: Array<{ mediaType: string; digest: string; size: number; annotations?: Record<string, string> }> };
    if (!Array.isArray(doc.layers)) throw new UserError(`${formatReference(ref)} is not an image manifest (an index of several platforms is not read)`);
    const attachments: Artifact[] = [];
    for (const d of await listReferrers(client, ref.repository, digest)) {
      const artifactBytes = (await getBytes(client, `/v2/${ref.repository}/manifests/${d.digest}`, MAX_MANIFEST, d.digest, [d.mediaType])).bytes;
      const parsed = parseArtifactManifest(artifactBytes, `${formatReference(ref)}: referrer ${d.digest}`);
      const blobs = [];
      for (const b of [parsed.config, ...parsed.layers]) {
        const { bytes } = await getBytes(client, `/v2/${ref.repository}/blobs/${b.digest}`, MAX_DOCUMENT, b.digest, ['*/*']);
        if (sha256Digest(bytes) !== b.digest) throw new UserError(`${formatReference(ref)}: blob ${b.digest} does not match its digest`);
        blobs.push({ descriptor: b, bytes });
      }
      attachments.push({ artifactType: parsed.artifactType, manifestBytes: artifactBytes, descriptor: { ...d, artifactType: parsed.artifactType }, blobs });
    }
    const tag = ref.tag ? [`${ref.repository}:${ref.tag}`] : [];
    return {
      manifestBytes: manifest.bytes,
      manifestMediaType: doc.mediaType ?? manifest.mediaType,
      configBytes: Buffer.alloc(0),
      configDescriptor: doc.config as Image['configDescriptor'],
      layers: doc.layers.map((l) => ({
        descriptor: l,
        diffId: '',
        compression: /gzip$/.test(l.mediaType) ? 'gzip' : 'none',
        contents: (l.annotations?.['dev.nix2oci.contents'] ?? '').split('\n').filter(Boolean),
        open: () => {
          throw new Error('layers of a pulled manifest are not fetched');
        },
      })),
      tags: tag,
      attachments,
    };
  } catch (err) {
    throw secrets.error(err);
  } finally {
    await agent?.close().catch(() => {});
  }
}

async function getBytes(client: RegistryClient, url: string, limit: number, what: string, accept: string[]): Promise<{ bytes: Buffer; mediaType: string }> {
  let res;
  try {
    res = await client.request({ method: 'GET', url, headers: { accept: accept.join(', ') }, retry: true });
  } catch (err) {
    throw client.networkError(err);
  }
  if (res.status !== 200) throw new UserError(`${client.registry}: reading ${what} failed: ${await describeFailure(res, client.secrets)}`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res.body) {
    size += (chunk as Buffer).length;
    if (size > limit) {
      await res.body.dump();
      throw new UserError(`${client.registry}: ${what} is larger than ${limit} bytes`);
    }
    chunks.push(chunk as Buffer);
  }
  return { bytes: Buffer.concat(chunks), mediaType: String(res.headers['content-type'] ?? '') };
}
