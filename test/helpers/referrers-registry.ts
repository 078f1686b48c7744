import { createHash, randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A small in-memory registry that has what distribution 2.8 lacks: the OCI 1.1 referrers API
 * (`GET /v2/<name>/referrers/<digest>`, and `OCI-Subject` on a manifest PUT with a subject). No
 * registry with it installs here (distribution 3, zot, Harbor are not packaged), so the API path of a
 * push is tested against this one; the fallback is tested against the real docker-registry.
 * Monolithic uploads only (POST then PUT), plain HTTP, no auth: what a push of small images uses.
 */
export interface ReferrersRegistry {
  host: string;
  /** Every request, `METHOD path`, in order. */
  requests: string[];
  stop(): Promise<void>;
}

export async function startReferrersRegistry(): Promise<ReferrersRegistry> {
  const blobs = new Map<string, Buffer>();
  const manifests = new Map<string, { bytes: Buffer; mediaType: string }>();
  const requests: string[] = [];
  const server: Server = createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    requests.push(`${req.method} ${url.pathname}`);
    const body = await readBody(req);
    const send = (status: number, headers: Record<string, string> = {}, payload?: Buffer) => {
      res.writeHead(status, { 'docker-distribution-api-version': 'registry/2.0', ...headers, 'content-length': String(payload?.length ?? 0) });
      res.end(req.method === 'HEAD' ? undefined : payload);
    };
    if (url.pathname === '/v2/') return send(200);
    const m = /^\/v2\/(.+?)\/(blobs\/uploads\/|blobs\/uploads\/([\w-]+)|blobs\/(sha256:[0-9a-f]{64})|manifests\/([^/]+)|referrers\/(sha256:[0-9a-f]{64}))$/.exec(url.pathname);
    if (!m) return send(404);
    const [, name, , uploadId, blobDigest, reference, referred] = m;
    if (req.method === 'POST' && url.pathname.endsWith('/blobs/uploads/')) return send(202, { location: `/v2/${name}/blobs/uploads/${randomUUID()}` });
    if (req.method === 'PUT' && uploadId) {
      const digest = url.searchParams.get('digest')!;
      if (sha256(body) !== digest) return send(400);
      blobs.set(digest, body);
      return send(201, { location: `/v2/${name}/blobs/${digest}`, 'docker-content-digest': digest });
    }
    if (blobDigest) {
      const blob = blobs.get(blobDigest);
      return blob ? send(200, { 'content-type': 'application/octet-stream', 'docker-content-digest': blobDigest }, blob) : send(404);
    }
    if (reference && req.method === 'PUT') {
      const digest = sha256(body);
      const mediaType = String(req.headers['content-type']);
      manifests.set(`${name}@${digest}`, { bytes: body, mediaType });
      manifests.set(`${name}:${reference}`, { bytes: body, mediaType });
      const subject = (JSON.parse(body.toString('utf8')) as { subject?: { digest: string } }).subject?.digest;
      return send(201, { 'docker-content-digest': digest, ...(subject && { 'oci-subject': subject }) });
    }
    if (reference) {
      const found = manifests.get(reference.startsWith('sha256:') ? `${name}@${reference}` : `${name}:${reference}`);
      return found ? send(200, { 'content-type': found.mediaType, 'docker-content-digest': sha256(found.bytes) }, found.bytes) : send(404);
    }
    if (referred) {
      const listed = [...manifests.entries()]
        .filter(([key]) => key.startsWith(`${name}@`))
        .flatMap(([key, { bytes, mediaType }]) => {
          const doc = JSON.parse(bytes.toString('utf8')) as { subject?: { digest: string }; artifactType?: string; annotations?: Record<string, string> };
          if (doc.subject?.digest !== referred) return [];
          return [{ mediaType, digest: key.slice(name!.length + 1), size: bytes.length, artifactType: doc.artifactType, ...(doc.annotations && { annotations: doc.annotations }) }];
        });
      return send(200, { 'content-type': 'application/vnd.oci.image.index.v1+json' }, Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: listed })));
    }
    return send(405);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    host: `127.0.0.1:${port}`,
    requests,
    stop: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

function sha256(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}
