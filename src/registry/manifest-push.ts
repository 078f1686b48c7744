import { createHash } from 'node:crypto';
import type { Image } from '../model/image.js';
import { UserError } from '../util/errors.js';
import { describeFailure, type RegistryClient } from './client.js';
import { shownDigest } from './secrets.js';
import { firstHeader, type HttpResponse } from './transport.js';

/**
 * Puts the manifest, byte for byte as the image carries it (OCI or Docker schema 2), under each tag,
 * or under its digest when there is no tag. Called only once every blob it names is confirmed, so
 * a tag never points at an image with missing blobs. Returns the manifest digest.
 */
export async function pushManifest(client: RegistryClient, repository: string, image: Pick<Image, 'manifestBytes' | 'manifestMediaType'>, tags: string[]): Promise<string> {
  const digest = `sha256:${createHash('sha256').update(image.manifestBytes).digest('hex')}`;
  for (const reference of tags.length > 0 ? tags : [digest]) {
    await putManifest(client, repository, reference, image.manifestBytes, image.manifestMediaType);
  }
  return digest;
}

/**
 * One manifest (an image's, an artifact's, an index) PUT under `reference` (a tag or its digest), checked
 * to be stored as sent. Gives the response's headers (a registry with the referrers API answers an
 * artifact with `OCI-Subject`).
 */
export async function putManifest(client: RegistryClient, repository: string, reference: string, bytes: Buffer, mediaType: string): Promise<HttpResponse['headers']> {
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  const where = `${client.registry}/${repository}`;
  let res;
  try {
    res = await client.request({
      method: 'PUT',
      url: `/v2/${repository}/manifests/${reference}`,
      headers: { 'content-type': mediaType, 'content-length': String(bytes.length) },
      body: () => bytes,
      retry: true, // a manifest PUT is idempotent
    });
  } catch (err) {
    throw client.networkError(err);
  }
  if (res.status !== 201 && res.status !== 200 && res.status !== 202) {
    const detail = await describeFailure(res, client.secrets);
    const hint = res.status === 401 || res.status === 403 ? ` (${client.auth.describeIdentity()} has no push access)` : '';
    throw new UserError(`pushing the manifest to ${where}:${reference} failed: ${detail}${hint}`);
  }
  await res.body.dump();
  const stored = firstHeader(res.headers, 'docker-content-digest');
  if (stored && stored !== digest) {
    throw new UserError(`${where} stored the manifest as ${shownDigest(stored)}, not ${digest}: the registry rewrote it`);
  }
  return res.headers;
}
