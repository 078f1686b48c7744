import { mkdtempSync, readFileSync, rmSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pushAndShow, type ShownPushOptions } from '../../src/cli/push-progress.js';
import { MOUNT_FROM_ANNOTATION } from '../../src/registry/mount-sources.js';
import { isUserError } from '../../src/util/errors.js';
import { freePort, startRegistry, type RunningRegistry } from '../helpers/registry.js';
import { tools } from '../helpers/tools.js';
import { startFaultProxy, type FaultProxy } from './support/fault-proxy.js';
import { assembleImage, busyboxLayer, randomLayer, sha256, writeTestImage, type TestImage } from './support/test-image.js';
import { podmanPullAndRun, skopeoCopyBack, skopeoInspect } from './support/verify.js';
import { capture } from './support/capture.js';
import { buildDemoImage, DEMO_OUTPUT } from './support/demo-image.js';
import type { Image } from '../../src/model/image.js';

const plain = { tlsVerify: false } as const;

describe.runIf(tools('docker-registry', 'skopeo', 'podman'))('push to a plain-HTTP registry', () => {
  let registry: RunningRegistry;
  let proxy: FaultProxy;
  let work: string;
  let image: TestImage;
  let dockerImage: TestImage;
  let demo: Image;

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'nix2oci-push-plain-'));
    registry = await startRegistry();
    proxy = await startFaultProxy({ host: '127.0.0.1', port: registry.port });
    demo = await buildDemoImage(work);
    image = await writeTestImage(join(work, 'oci'), { layers: [busyboxLayer(), randomLayer('a', 300_000)] });
    dockerImage = await writeTestImage(join(work, 'docker'), {
      format: 'docker',
      layers: [busyboxLayer(), randomLayer('b', 200_000)],
      cmd: ['/bin/sh', '-c', 'echo docker schema 2'],
    });
  });
  afterAll(async () => {
    await proxy?.close();
    await registry?.stop();
    rmSync(work, { recursive: true, force: true });
  });

  const options = (extra: ShownPushOptions = {}): ShownPushOptions => ({ ...plain, stdout: null, progress: 'quiet', ...extra });
  const blobWrites = (from: number) =>
    proxy.requests.slice(from).filter((r) => (r.method === 'PUT' || r.method === 'PATCH') && r.path.includes('/blobs/'));

  it('pushes the demo image, which skopeo reads back byte for byte and podman runs', async () => {
    const out = capture();
    const result = await pushAndShow(demo, `${registry.host}/demo/app:v1`, options({ stdout: out.stream, tags: ['extra'] }));

    expect(result.digest).toBe(sha256(demo.manifestBytes));
    expect(out.text()).toBe(`${registry.host}/demo/app:v1@${result.digest}\n`);
    const blobs = [...demo.layers.map((l) => l.descriptor.digest), demo.configDescriptor.digest].sort();
    expect(result.uploaded.sort()).toEqual(blobs);

    for (const tag of ['v1', 'extra']) {
      expect((await skopeoInspect(`${registry.host}/demo/app:${tag}`, plain)).Digest).toBe(result.digest);
    }
    const back = await skopeoCopyBack(`${registry.host}/demo/app:v1`, plain);
    expect(back.manifestDigest).toBe(result.digest);
    expect(back.blobs).toEqual(blobs);

    expect(await podmanPullAndRun(`${registry.host}/demo/app:v1`, plain)).toBe(DEMO_OUTPUT);
  });

  it('pushes a Docker schema 2 image as it is, and a second push uploads no blob', async () => {
    const ref = `${proxy.host}/demo/docker:latest`;
    const first = proxy.requests.length;
    const result = await pushAndShow(dockerImage, ref, options());
    expect(blobWrites(first).length).toBeGreaterThan(0);

    const raw = await fetch(`${registry.url}/v2/demo/docker/manifests/latest`, {
      headers: { accept: 'application/vnd.docker.distribution.manifest.v2+json' },
    });
    expect(raw.headers.get('content-type')).toBe('application/vnd.docker.distribution.manifest.v2+json');
    expect(Buffer.from(await raw.arrayBuffer()).equals(dockerImage.manifestBytes)).toBe(true);
    expect(await podmanPullAndRun(`${registry.host}/demo/docker:latest`, plain)).toBe('docker schema 2\n');

    const second = proxy.requests.length;
    const again = await pushAndShow(dockerImage, ref, options());
    expect(again.digest).toBe(result.digest);
    expect(blobWrites(second)).toEqual([]);
    expect(again.skipped).toHaveLength(3);
    expect(again.uploaded).toEqual([]);
  });

  it('pushes many layers at once without a warning', async () => {
    const many = await writeTestImage(join(work, 'many'), { layers: Array.from({ length: 40 }, (_, i) => randomLayer(`l${i}`, 2_000 + i)) });
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(`${w.name}: ${w.message}`);
    process.on('warning', onWarning);
    try {
      const result = await pushAndShow(many, `${registry.host}/demo/many`, options({ jobs: 8 }));
      expect(result.uploaded).toHaveLength(41);
      const again = await pushAndShow(many, `${registry.host}/demo/many`, options({ jobs: 8 }));
      expect(again.skipped).toHaveLength(41);
      await new Promise((r) => setImmediate(r)); // warnings are emitted on the next tick
    } finally {
      process.off('warning', onWarning);
    }
    expect(warnings).toEqual([]);
  });

  it('uploads a large blob in PATCH chunks and writes --digestfile atomically', async () => {
    const big = await writeTestImage(join(work, 'big'), { layers: [randomLayer('big', 700_000)] });
    const digestFile = join(work, 'digest');
    const first = proxy.requests.length;
    const result = await pushAndShow(big, `${proxy.host}/demo/big`, options({ chunkSize: 256 * 1024, digestFile }));
    const patches = proxy.requests.slice(first).filter((r) => r.method === 'PATCH');
    expect(patches.map((p) => p.contentRange)).toEqual(['0-262143', '262144-524287', `524288-${big.layers[0]!.descriptor.size - 1}`]);
    expect(readFileSync(digestFile, 'utf8')).toBe(result.digest);
    expect(result.reference).toBe(`${proxy.host}/demo/big:latest@${result.digest}`);
    expect((await skopeoCopyBack(`${registry.host}/demo/big:latest`, plain)).manifestDigest).toBe(result.digest);
  });

  it('mounts blobs from --mount-from and from the manifest annotation instead of uploading them', async () => {
    const base = await writeTestImage(join(work, 'base'), { layers: [randomLayer('base1', 50_000)] });
    const other = await writeTestImage(join(work, 'other'), { layers: [randomLayer('other1', 40_000)] });
    await pushAndShow(base, `${registry.host}/team/base:1`, options());
    await pushAndShow(other, `${registry.host}/team/other:1`, options());

    // The derived image reuses both base images' layers: one is found by --mount-from, one by the annotation.
    const withShared = assembleImage(
      [base.layers[0]!, other.layers[0]!],
      new Map([...base.blobFiles, ...other.blobFiles]),
      { annotations: { [MOUNT_FROM_ANNOTATION]: 'team/other' } },
    );
    const first = proxy.requests.length;
    const result = await pushAndShow(withShared, `${proxy.host}/team/app:1`, options({ mountFrom: ['team/base'] }));
    expect(result.mounted.sort()).toEqual([base.layers[0]!.descriptor.digest, other.layers[0]!.descriptor.digest].sort());
    const mounts = proxy.requests.slice(first).filter((r) => r.method === 'POST' && r.path.includes('mount='));
    expect(mounts.some((r) => r.path.includes('from=team%2Fbase'))).toBe(true);
    expect(mounts.some((r) => r.path.includes('from=team%2Fother'))).toBe(true);
    expect(blobWrites(first).filter((r) => r.path.includes('digest=sha256%3A' + base.layers[0]!.descriptor.digest.slice(7)))).toEqual([]);
  });

  it('names the blob and the file when a blob cannot be read from disk', async () => {
    const broken = await writeTestImage(join(work, 'broken'), { layers: [randomLayer('gone', 5_000), randomLayer('short', 300_000)] });
    const gone = broken.layers[0]!.descriptor.digest;
    rmSync(broken.blobFiles.get(gone)!);
    let err = await pushAndShow(broken, `${registry.host}/demo/broken`, options()).catch((e: unknown) => e);
    expect(isUserError(err)).toBe(true);
    expect((err as Error).message).toBe(`cannot read blob ${gone} at byte offset 0: ENOENT ${broken.blobFiles.get(gone)}`);

    const short = broken.layers[1]!.descriptor;
    const kept = { ...broken, layers: [broken.layers[1]!] };
    truncateSync(broken.blobFiles.get(short.digest)!, 200_000);
    // Another repository: the first push may have sent this blob whole before it stopped.
    err = await pushAndShow(kept, `${registry.host}/demo/broken-short`, options({ chunkSize: 64 * 1024 })).catch((e: unknown) => e);
    expect(isUserError(err)).toBe(true);
    expect((err as Error).message).toBe(`blob ${short.digest} ends at byte offset 200000, before its size ${short.size}`);
  });

  it('refuses plain HTTP unless --tls-verify=false, with a one-line message', async () => {
    const err = await pushAndShow(image, `${registry.host}/demo/app:tls`, { stdout: null, progress: 'quiet' }).catch((e: unknown) => e);
    expect(isUserError(err)).toBe(true);
    expect((err as Error).message).toMatch(/does not speak TLS.*--tls-verify=false/);
    expect((err as Error).message).not.toContain('\n');
  });

  it('says so clearly when the registry is down', async () => {
    const port = await freePort();
    const started = Date.now();
    const err = await pushAndShow(image, `127.0.0.1:${port}/demo/app`, options()).catch((e: unknown) => e);
    expect(isUserError(err)).toBe(true);
    expect((err as Error).message).toBe(`cannot connect to 127.0.0.1:${port}: connection refused (is the registry running?)`);
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('draws a bar per blob and one overall on a terminal', async () => {
    const err = capture();
    Object.assign(err.stream, { isTTY: true, columns: 120 });
    const out = capture();
    const small = await writeTestImage(join(work, 'tty'), { layers: [randomLayer('tty', 300_000)] });
    const result = await pushAndShow(small, `${registry.host}/demo/tty`, { ...plain, stdout: out.stream, stderr: err.stream, chunkSize: 64 * 1024 });
    const screen = err.text();
    expect(screen).toMatch(/total \S+ 100% 29\d KiB\/29\d KiB [\d.]+ \w+\/s ETA/);
    expect(screen).toMatch(/\[\?25l/); // the cursor is hidden while drawing...
    expect(screen).toMatch(/\[\?25h/); // ...and shown again
    expect(screen).toMatch(/: uploaded 29\d KiB in /);
    expect(out.text()).toBe(`${registry.host}/demo/tty:latest@${result.digest}\n`);
  });

  it('prints a line per blob and the pushed reference last when not on a terminal', async () => {
    const err = capture();
    const out = capture();
    const small = await writeTestImage(join(work, 'lines'), { layers: [randomLayer('lines', 10_000)] });
    const result = await pushAndShow(small, `${registry.host}/demo/lines`, { ...plain, stdout: out.stream, stderr: err.stream });
    const lines = err.text().trim().split('\n');
    expect(lines[0]).toMatch(/^pushing 2 blobs \(.*\) to 127\.0\.0\.1:\d+\/demo\/lines$/);
    expect(lines.filter((l) => /: uploaded .* in .*\/s\)$/.test(l))).toHaveLength(2);
    expect(out.text().trim().split('\n').at(-1)).toBe(`${registry.host}/demo/lines:latest@${result.digest}`);
  });
});
