import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { pushAndShow, type ShownPushOptions } from '../../src/cli/push-progress.js';
import { isUserError } from '../../src/util/errors.js';
import { startRegistry, type RunningRegistry } from '../helpers/registry.js';
import { tools } from '../helpers/tools.js';
import { compileForChild, PUSH_CHILD } from './support/compile.js';
import { startFaultProxy, type FaultProxy, type ProxiedRequest } from './support/fault-proxy.js';
import { randomLayer, writeOciLayout, writeTestImage, type TestImage } from './support/test-image.js';
import { skopeoCopyBack } from './support/verify.js';

const plain = { tlsVerify: false } as const;
const CHUNK = 256 * 1024;

/**
 * A fault proxy between the push and a real registry: server errors, rate limiting, connections
 * dropped mid-upload and stalls must not stop a push; a push that fails or is killed is finished
 * by running it again, which uploads only what is missing.
 */
describe.runIf(tools('docker-registry', 'skopeo'))('push through a flaky network', () => {
  let registry: RunningRegistry;
  let proxy: FaultProxy;
  let work: string;
  let image: TestImage;
  let repoCount = 0;

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'nix2oci-faults-'));
    registry = await startRegistry();
    proxy = await startFaultProxy({ host: '127.0.0.1', port: registry.port });
    // One blob of four chunks, one small blob (a single PUT), and the config.
    image = await writeTestImage(join(work, 'image'), { layers: [randomLayer('big', 3 * CHUNK + 1000), randomLayer('small', 20_000)] });
  });
  afterEach(() => {
    proxy.rule = () => undefined;
  });
  afterAll(async () => {
    await proxy?.close();
    await registry?.stop();
    rmSync(work, { recursive: true, force: true });
  });

  const options = (extra: ShownPushOptions = {}): ShownPushOptions => ({
    ...plain,
    stdout: null,
    progress: 'quiet',
    chunkSize: CHUNK,
    retryDelayMs: 20,
    jobs: 2,
    ...extra,
  });
  /** A fresh repository per test, so every push starts cold. */
  const freshRef = () => `${proxy.host}/faults/repo${++repoCount}:latest`;
  const since = (from: number) => proxy.requests.slice(from);
  const blobWrites = (requests: ProxiedRequest[]) =>
    requests.filter((r) => (r.method === 'PUT' || r.method === 'PATCH') && r.path.includes('/blobs/'));

  async function expectIntact(ref: string, digest: string): Promise<void> {
    const back = await skopeoCopyBack(ref.replace(proxy.host, registry.host), plain);
    expect(back.manifestDigest).toBe(digest);
    expect(back.blobs).toEqual([...image.layers.map((l) => l.descriptor.digest), image.configDescriptor.digest].sort());
  }

  it('gets past 500s and 429s, honouring Retry-After', async () => {
    const seen = new Map<string, number>();
    const once = (key: string) => (seen.set(key, (seen.get(key) ?? 0) + 1), seen.get(key) === 1);
    proxy.rule = ({ method, path }) => {
      if (method === 'POST' && path.includes('/blobs/uploads/') && once('post')) return { kind: 'status', status: 500 };
      if (method === 'PATCH' && once('patch')) return { kind: 'status', status: 429, retryAfter: '1' };
      if (method === 'PUT' && path.includes('/manifests/') && once('manifest')) return { kind: 'status', status: 503 };
      if (method === 'HEAD' && once('head')) return { kind: 'status', status: 502 };
      return undefined;
    };
    const ref = freshRef();
    const started = Date.now();
    const result = await pushAndShow(image, ref, options());
    expect(Date.now() - started).toBeGreaterThanOrEqual(1000); // waited as Retry-After asked
    expect([...seen.keys()].sort()).toEqual(['head', 'manifest', 'patch', 'post']);
    await expectIntact(ref, result.digest);
  });

  it('resumes from the registry’s Range after a connection drops in the middle of a chunk', async () => {
    let patches = 0;
    // The second chunk's connection dies after 100 kB; nothing of it reached the registry.
    proxy.rule = ({ method }) => (method === 'PATCH' && ++patches === 2 ? { kind: 'drop-before-forward', afterBytes: 100_000 } : undefined);
    const from = proxy.requests.length;
    const ref = freshRef();
    const result = await pushAndShow(image, ref, options());

    const requests = since(from);
    const failed = requests.findIndex((r) => r.fault === 'drop-before-forward');
    const after = requests.slice(failed + 1);
    // It asked the registry where the upload stands, then went on from the second chunk, not from byte 0.
    expect(after.find((r) => r.method === 'GET' && r.path.includes('/blobs/uploads/'))).toBeDefined();
    const size = image.layers[0]!.descriptor.size;
    expect(after.filter((r) => r.method === 'PATCH').map((r) => r.contentRange)).toEqual([
      `${CHUNK}-${2 * CHUNK - 1}`,
      `${2 * CHUNK}-${3 * CHUNK - 1}`,
      `${3 * CHUNK}-${size - 1}`,
    ]);
    expect(requests.filter((r) => r.method === 'PATCH' && r.contentRange?.startsWith('0-'))).toHaveLength(1);
    await expectIntact(ref, result.digest);
  });

  it('starts the blob over when a dropped chunk left the upload session unusable', async () => {
    let patches = 0;
    // Part of the second chunk reaches the registry: distribution then invalidates the session.
    proxy.rule = ({ method }) => (method === 'PATCH' && ++patches === 2 ? { kind: 'drop-mid-forward', afterBytes: 100_000 } : undefined);
    const from = proxy.requests.length;
    const ref = freshRef();
    const result = await pushAndShow(image, ref, options());
    const requests = since(from);
    expect(requests.filter((r) => r.method === 'PATCH' && r.contentRange?.startsWith('0-'))).toHaveLength(2);
    await expectIntact(ref, result.digest);
  });

  it('gives up, bounded, when every new upload session fails at the same chunk', async () => {
    // The second chunk always breaks half way, so each retry restarts the blob and never gets further.
    proxy.rule = ({ method, contentRange }) =>
      method === 'PATCH' && contentRange?.startsWith(`${CHUNK}-`) ? { kind: 'drop-mid-forward', afterBytes: 1000 } : undefined;
    const err = await pushAndShow(image, freshRef(), options({ retries: 2 })).catch((e: unknown) => e);
    expect(isUserError(err)).toBe(true);
    expect((err as Error).message).toMatch(new RegExp(`^pushing blob ${image.layers[0]!.descriptor.digest} to .* failed after 3 attempts: `));
  });

  it('abandons a stalled request and retries it', async () => {
    let stalled = false;
    proxy.rule = ({ method }) => {
      if (method !== 'PATCH' || stalled) return undefined;
      stalled = true;
      return { kind: 'stall' };
    };
    const ref = freshRef();
    const started = Date.now();
    const result = await pushAndShow(image, ref, options({ stallTimeoutMs: 1000 }));
    expect(stalled).toBe(true);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1000);
    await expectIntact(ref, result.digest);
  });

  it('fails naming the blob and the status when errors persist, and a second run uploads only what is missing', async () => {
    proxy.rule = ({ method }) => (method === 'PATCH' ? { kind: 'status', status: 500 } : undefined);
    const ref = freshRef();
    const err = await pushAndShow(image, ref, options({ retries: 2 })).catch((e: unknown) => e);
    expect(isUserError(err)).toBe(true);
    const big = image.layers[0]!.descriptor.digest;
    expect((err as Error).message).toBe(
      `pushing blob ${big} to ${proxy.host}/${ref.slice(proxy.host.length + 1, -':latest'.length)} failed after 3 attempts: uploading bytes 0-${CHUNK - 1}: 500 UNKNOWN: injected by the fault proxy`,
    );
    // No tag points at the incomplete image.
    const manifest = await fetch(`${registry.url}/v2/${ref.slice(proxy.host.length + 1, -':latest'.length)}/manifests/latest`);
    expect(manifest.status).toBe(404);

    proxy.rule = () => undefined;
    const from = proxy.requests.length;
    const result = await pushAndShow(image, ref, options());
    expect(result.uploaded).toEqual([big]);
    expect(result.skipped.sort()).toEqual([image.layers[1]!.descriptor.digest, image.configDescriptor.digest].sort());
    const finals = blobWrites(since(from)).filter((r) => r.method === 'PUT');
    expect(finals).toHaveLength(1);
    expect(finals[0]!.path).toContain(`digest=${encodeURIComponent(big)}`);
    await expectIntact(ref, result.digest);
  });

  it('finishes a push that was killed half way, uploading only the blobs still missing', async () => {
    const outDir = await compileForChild(['src/cli/push-progress.ts', 'src/registry/push.ts']);
    try {
      const many = await writeTestImage(join(work, 'many'), {
        layers: Array.from({ length: 6 }, (_, i) => randomLayer(`m${i}`, 30_000 + i)),
      });
      const layout = join(work, 'many-layout');
      writeOciLayout(layout, many);
      const ref = freshRef();

      // Once three blobs are in, everything stalls; then the push is killed with SIGKILL.
      let completed = 0;
      proxy.rule = ({ method, path }) => {
        if (method === 'PUT' && path.includes('digest=') && ++completed > 3) return { kind: 'stall' };
        return completed > 3 ? { kind: 'stall' } : undefined;
      };
      const child = spawn(process.execPath, [PUSH_CHILD, outDir, layout, ref, JSON.stringify({ ...plain, jobs: 1, stdout: null })], {
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
      const deadline = Date.now() + 30_000;
      while (completed <= 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      expect(completed).toBeGreaterThan(3);
      child.kill('SIGKILL');
      expect(await exited).toBe('SIGKILL');

      proxy.rule = () => undefined;
      const from = proxy.requests.length;
      const result = await pushAndShow(many, ref, options({ jobs: 1 }));
      expect(result.skipped).toHaveLength(3);
      expect(result.uploaded).toHaveLength(4); // three layers and the config
      const uploadedDigests = blobWrites(since(from))
        .filter((r) => r.method === 'PUT')
        .map((r) => decodeURIComponent(/digest=([^&]+)/.exec(r.path)![1]!));
      expect(uploadedDigests.sort()).toEqual(result.uploaded.sort());
      const back = await skopeoCopyBack(ref.replace(proxy.host, registry.host), plain);
      expect(back.manifestDigest).toBe(result.digest);
    } finally {
      rmSync(dirname(outDir), { recursive: true, force: true });
    }
  });
});
