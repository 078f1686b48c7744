import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, cliOk, REPO, runCli, type CliResult } from '../helpers/cli.js';
import { startRegistry, type RunningRegistry } from '../helpers/registry.js';
import { hasTool, tools } from '../helpers/tools.js';
import { podmanLoad, podmanRemove, podmanRun } from '../helpers/podman.js';
import { openRegistry, type RegistryAccess } from '../../src/registry/connect.js';
import { fetchArtifact, pushArtifact } from '../../src/registry/artifact.js';
import { artifactOf } from '../../src/model/artifact.js';
import { CACHE_INDEX_ARTIFACT_TYPE, CACHE_INDEX_MEDIA_TYPE, MAX_INDEX_BYTES, parseCacheIndex, serializeCacheIndex, type CacheIndex } from '../../src/registry/cache-index.js';
import { DEFAULT_RETRY_POLICY } from '../../src/registry/retry.js';
import { isElfFactsList } from '../../src/pipeline/wheels.js';
import { makePki } from '../registry/support/pki.js';

const DEMO = ['--closure', join(REPO, 'layers/demo/demo.closure'), '--recipe', join(REPO, 'layers/demo/image.json')];
/** The same closure without the recipe: another image root, the same store-path layers. */
const BARE = ['--closure', join(REPO, 'layers/demo/demo.closure'), '--entrypoint', '{{demo-app}}/bin/hello'];

interface Summary {
  manifestDigest: string;
  layers: { digest: string; diffId: string; from: 'local' | 'registry' | 'built'; contents: string[] }[];
  registryCache: { hits: number } | null;
}
const summaryOf = (r: CliResult): Summary => JSON.parse(r.stdout.slice(0, r.stdout.lastIndexOf('}') + 1)) as Summary;
const warnings = (r: CliResult) => r.stderr.split('\n').filter((l) => l.startsWith('warning:'));

describe.runIf(tools('docker-registry', 'skopeo', 'podman'))('the registry as a shared layer cache', () => {
  let registry: RunningRegistry;
  let dir: string;
  let reference: string;
  let runner = 0;
  const access: RegistryAccess = { tlsVerify: false };

  /** A fresh CI runner: its own empty layer cache and TMPDIR; returns them with the result. */
  const fresh = (args: string[], image = DEMO) => {
    const root = join(dir, `runner-${++runner}`);
    const tmp = join(root, 'tmp');
    mkdirSync(tmp, { recursive: true });
    const result = runCli(['build-image', ...image, '--tls-verify=false', '--json', '--cache-dir', join(root, 'cache'), ...args], { env: { TMPDIR: tmp } });
    if (result.code !== 0) throw new Error(`build failed: ${result.stderr}`);
    return { result, summary: summaryOf(result), tmp, cache: join(root, 'cache') };
  };
  const indexAt = async (repository: string, auth: RegistryAccess = access) => {
    const session = await openRegistry(registry.host, repository, auth, { scopes: [`repository:${repository}:pull`], connections: 2, stallTimeoutMs: 10_000, retry: DEFAULT_RETRY_POLICY });
    try {
      const artifact = await fetchArtifact(session.client, repository, 'nix2oci-cache', CACHE_INDEX_ARTIFACT_TYPE, MAX_INDEX_BYTES);
      return artifact;
    } finally {
      await session.close();
    }
  };
  const writeIndex = async (repository: string, bytes: Buffer) => {
    const session = await openRegistry(registry.host, repository, access, { scopes: [`repository:${repository}:pull,push`], connections: 2, stallTimeoutMs: 10_000, retry: DEFAULT_RETRY_POLICY });
    try {
      await pushArtifact(session.client, repository, 'nix2oci-cache', artifactOf({ artifactType: CACHE_INDEX_ARTIFACT_TYPE, documentType: CACHE_INDEX_MEDIA_TYPE, document: bytes }), DEFAULT_RETRY_POLICY);
    } finally {
      await session.close();
    }
  };

  beforeAll(async () => {
    registry = await startRegistry();
    dir = mkdtempSync(join(tmpdir(), 'nix2oci-e2e-registry-cache-'));
    reference = (JSON.parse(cliOk(['build-image', ...DEMO, '--no-cache', '-q', '--json', '--output', join(dir, 'reference.tar')]).stdout) as Summary).manifestDigest;
  });
  afterAll(async () => {
    await registry?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('a fresh runner takes every layer from the registry, writes no layer byte, and pushes the same image, which runs', async () => {
    const cold = fresh(['--push', `${registry.host}/app:cold`]);
    expect(cold.summary.manifestDigest).toBe(reference);
    expect(cold.summary.layers.map((l) => l.from)).toEqual(['built', 'built', 'built', 'built']);
    const index = await indexAt('app');
    const read = parseCacheIndex(index!.bytes, isElfFactsList);
    expect('index' in read && [...read.index.values()].map((e) => e.digest).sort()).toEqual(cold.summary.layers.map((l) => l.digest).sort());

    for (const cacheFlags of [[], ['--no-cache']]) {
      const held = (await indexAt('app'))!.bytes;
      const args = cacheFlags.length ? ['--no-cache'] : [];
      const root = join(dir, `push-only-${cacheFlags.length}`);
      mkdirSync(root);
      const result = runCli(['build-image', ...DEMO, '--tls-verify=false', '--json', ...(args.length ? args : ['--cache-dir', join(root, 'cache')]), '--push', `${registry.host}/app:fresh`], { env: { TMPDIR: root } });
      expect(result.code, result.stderr).toBe(0);
      const summary = summaryOf(result);
      expect(summary.manifestDigest).toBe(reference);
      expect(summary.layers.map((l) => l.from)).toEqual(['registry', 'registry', 'registry', 'registry']);
      expect(summary.registryCache?.hits).toBe(4);
      expect(result.stderr).toContain('already holds this image');
      expect(warnings(result)).toEqual([]);
      // No layer byte was written: the work directory is gone and the fresh cache holds no blob.
      const left = readdirSync(root).filter((f) => f !== 'cache');
      expect(left).toEqual([]);
      if (!args.length) expect(readdirSync(join(root, 'cache', 'v3', 'blobs'))).toEqual([]);
      // The index already held every entry: it was not written again.
      expect((await indexAt('app'))!.bytes).toEqual(held);
    }

    // Pulled back by skopeo, the image podman loads runs.
    const pulled = join(dir, 'pulled.tar');
    execFileSync('skopeo', ['copy', '--src-tls-verify=false', `docker://${registry.host}/app:fresh`, `oci-archive:${pulled}:localhost/nix2oci-e2e-registry-cache:fresh`], { stdio: 'ignore' });
    const id = podmanLoad(pulled);
    try {
      expect(podmanRun(id, ['one'])).toBe('hello from nix2oci\nserved from a Nix store path\nargs: one\n');
    } finally {
      podmanRemove(id);
    }

    // With an output the blobs are fetched, checked, and make the same archive.
    const out = join(dir, 'fetched.tar');
    const fetched = fresh(['--cache-from', `${registry.host}/app`, '--verify-registry-cache', '--output', out]);
    expect(fetched.summary.layers.map((l) => l.from)).toEqual(['registry', 'registry', 'registry', 'registry']);
    expect(fetched.result.stderr).toMatch(/fetching [0-9a-f]{12} .* from the registry for the output/);
    expect(readFileSync(out).equals(readFileSync(join(dir, 'reference.tar')))).toBe(true);
  });

  it('a layer whose blob the registry lost is made again and uploaded; the image is the same', async () => {
    const cold = fresh(['--push', `${registry.host}/lost:1`]);
    const lost = cold.summary.layers.find((l) => l.contents.some((c) => c.endsWith('-demo-data')))!;
    const res = await fetch(`${registry.url}/v2/lost/blobs/${lost.digest}`, { method: 'DELETE' });
    expect(res.status).toBe(202);
    const again = fresh(['--push', `${registry.host}/lost:2`]);
    expect(again.summary.manifestDigest).toBe(reference);
    expect(again.summary.layers.map((l) => (l.digest === lost.digest ? l.from === 'built' : l.from === 'registry'))).toEqual([true, true, true, true]);
    expect(warnings(again.result)).toEqual([expect.stringMatching(/^warning: registry cache: 1 layer it names is not in .*\/lost with the digest and size it says; made instead$/)]);
    expect(again.result.stderr).toMatch(/demo-data \(gzip\): uploaded/);

    // Another repository, with the cache of this one: the blobs are mounted, not built or uploaded.
    const other = fresh(['--push', `${registry.host}/other:1`, '--cache-from', `${registry.host}/lost`]);
    expect(other.summary.manifestDigest).toBe(reference);
    expect(other.summary.layers.map((l) => l.from)).toEqual(['registry', 'registry', 'registry', 'registry']);
    expect(other.result.stderr.split('\n').filter((l) => l.includes(': uploaded'))).toEqual([expect.stringMatching(/ config: uploaded/)]);
  });

  it('an index it cannot trust is ignored with one warning, and the layers are made as without it', async () => {
    const cold = fresh(['--push', `${registry.host}/trusted:1`]);
    const good = parseCacheIndex((await indexAt('trusted'))!.bytes, isElfFactsList);
    if (!('index' in good)) throw new Error('no index');
    const swapped = (change: (e: CacheIndex) => void) => {
      const copy: CacheIndex = new Map([...good.index].map(([k, e]) => [k, { ...e }]));
      change(copy);
      return serializeCacheIndex(copy);
    };
    const text = serializeCacheIndex(good.index).toString();
    const cases: [string, Buffer, RegExp][] = [
      ['not JSON', Buffer.from('<html>502 Bad Gateway</html>'), /is not JSON/],
      ['truncated', Buffer.from(text.slice(0, text.length / 2)), /is not JSON/],
      ['keys of the wrong length', Buffer.from(text.replace(/"([0-9a-f]{64})":/, '"$1ab":')), /not 64 hex digits/],
      ['huge', Buffer.from(`{"schemaVersion":1,"entries":{}${' '.repeat(MAX_INDEX_BYTES)}}`), /at most \d+ are read/],
      ['wrong digests', swapped((i) => i.forEach((e) => (e.digest = `sha256:${'0'.repeat(64)}`))), /4 layers it names are not in/],
      ['wrong sizes', swapped((i) => i.forEach((e) => (e.size += 1))), /4 layers it names are not in/],
    ];
    for (const [index, [what, bytes, why]] of cases.entries()) {
      const repository = `hostile${index}`;
      // The image's blobs are in the repository (mounted), so only the index is wrong.
      for (const layer of cold.summary.layers) await fetch(`${registry.url}/v2/${repository}/blobs/uploads/?mount=${layer.digest}&from=trusted`, { method: 'POST' });
      await writeIndex(repository, bytes);
      // A push (and the index it writes) for the first case; reading the index is the same for the others.
      const target = index === 0 ? ['--push', `${registry.host}/${repository}:1`] : ['--cache-from', `${registry.host}/${repository}`, '--output', join(dir, `${repository}.tar`)];
      const { result, summary } = fresh(target);
      expect([what, summary.manifestDigest]).toEqual([what, reference]);
      expect([what, summary.layers.map((l) => l.from)]).toEqual([what, ['built', 'built', 'built', 'built']]);
      expect([what, warnings(result).length]).toEqual([what, 1]);
      expect(warnings(result)[0]).toMatch(why);
    }
    // A registry cache out of reach, for a build that does not push: one warning, and every layer built.
    const away = fresh(['--cache-from', '127.0.0.1:1/nowhere', '--output', join(dir, 'away.tar')]);
    expect(away.summary.layers.map((l) => l.from)).toEqual(['built', 'built', 'built', 'built']);
    expect(warnings(away.result)).toEqual([expect.stringMatching(/^warning: registry cache 127\.0\.0\.1:1\/nowhere:nix2oci-cache ignored: .*127\.0\.0\.1:1/)]);
    // The build's own index replaced the one it ignored.
    expect('index' in parseCacheIndex((await indexAt('hostile0'))!.bytes, isElfFactsList)).toBe(true);

    // Every entry pointing at a real blob, with a wrong diffID: only --verify-registry-cache can tell.
    await writeIndex('trusted', swapped((i) => i.forEach((e) => (e.diffId = `sha256:${'1'.repeat(64)}`))));
    const verified = fresh(['--push', `${registry.host}/trusted:2`, '--verify-registry-cache']);
    expect(verified.summary.manifestDigest).toBe(reference);
    expect(verified.summary.layers.map((l) => l.from)).toEqual(['built', 'built', 'built', 'built']);
    expect(warnings(verified.result)).toHaveLength(4);
    expect(warnings(verified.result)[0]).toMatch(/has diffID sha256:[0-9a-f]{64}, not sha256:1{64} as the registry cache says; the layer is made instead/);
  });

  it('two builds pushing different images to one repository at once keep both images\' entries', async () => {
    const run = (image: string[], tag: string) =>
      new Promise<CliResult>((resolve, reject) => {
        const root = mkdtempSync(join(dir, 'job-'));
        const child = spawn(process.execPath, [CLI, 'build-image', ...image, '--tls-verify=false', '--cache-dir', join(root, 'cache'), '--push', `${registry.host}/shared:${tag}`], {
          cwd: REPO,
          env: { ...process.env, TMPDIR: root },
        });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (d: Buffer) => (stdout += d));
        child.stderr.on('data', (d: Buffer) => (stderr += d));
        child.on('error', reject);
        child.on('close', (code) => resolve({ code, stdout, stderr }));
      });
    const [a, b] = await Promise.all([run(DEMO, 'a'), run(BARE, 'b')]);
    expect([a.code, a.stderr]).toEqual([0, expect.any(String)]);
    expect([b.code, b.stderr]).toEqual([0, expect.any(String)]);
    const read = parseCacheIndex((await indexAt('shared'))!.bytes, isElfFactsList);
    if (!('index' in read)) throw new Error('no index');
    const digests = new Set([...read.index.values()].map((e) => e.digest));
    // Each image's layers (their image roots differ) are all in the index.
    for (const image of ['a', 'b']) {
      const manifest = JSON.parse(execFileSync('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${registry.host}/shared:${image}`], { encoding: 'utf8' })) as { layers: { digest: string }[] };
      for (const layer of manifest.layers) expect([image, digests.has(layer.digest)]).toEqual([image, true]);
    }
  });
});

describe('registry cache flags', () => {
  it.each([
    [['--push', 'localhost:5000/a:1', '--no-registry-cache', '--cache-from', 'localhost:5000/a'], '--no-registry-cache contradicts --cache-from and --cache-to; give one'],
    [['--output', '/tmp/x.tar', '--cache-to', 'localhost:5000/a'], "--cache-to needs --push: the index names the pushed image's blobs"],
    [['--output', '/tmp/x.tar', '--verify-registry-cache'], '--verify-registry-cache needs --cache-from or --push'],
    [['--output', '/tmp/x.tar', '--cache-from', `localhost:5000/a@sha256:${'0'.repeat(64)}`], `--cache-from localhost:5000/a@sha256:${'0'.repeat(64)}: a registry cache is named by a tag, not a digest`],
    [['--push', 'localhost:5000/a:1', '--cache-from', 'example.com/a'], '--cache-from example.com/a:nix2oci-cache must be on the registry the image goes to (localhost:5000)'],
  ])('refuses %j in one line', (args, message) => {
    const result = runCli(['build-image', ...DEMO, ...args]);
    expect([result.code, result.stderr]).toEqual([1, `nix2oci: ${message}\n`]);
  });
});

describe.runIf(tools('docker-registry', 'htpasswd', 'skopeo'))('the registry cache with TLS and Basic auth', () => {
  const USER = 'cacher';
  const PASSWORD = 'S3cret-cache-pa55word';
  let registry: RunningRegistry;
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'nix2oci-e2e-registry-cache-tls-'));
    const pki = makePki();
    mkdirSync(join(dir, 'certs'));
    writeFileSync(join(dir, 'certs', 'ca.crt'), pki.caCert);
    const htpasswd = execFileSync('htpasswd', ['-Bbn', USER, PASSWORD], { encoding: 'utf8' });
    registry = await startRegistry({ tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.caCert }, htpasswd });
  });
  afterAll(async () => {
    await registry?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('reads and writes the index with the push\'s credentials and certificates, which never reach the index or the output', async () => {
    const auth = ['--creds', `${USER}:${PASSWORD}`, '--cert-dir', join(dir, 'certs')];
    const build = (n: number) => {
      const result = runCli(['build-image', ...DEMO, ...auth, '--json', '--cache-dir', join(dir, `cache-${n}`), '--push', `${registry.host}/private/app:${n}`]);
      expect(result.code, result.stderr).toBe(0);
      return result;
    };
    const cold = build(1);
    const again = build(2);
    expect(summaryOf(again).layers.map((l) => l.from)).toEqual(['registry', 'registry', 'registry', 'registry']);
    const session = await openRegistry(registry.host, 'private/app', { creds: `${USER}:${PASSWORD}`, certDir: join(dir, 'certs') }, { scopes: ['repository:private/app:pull'], connections: 2, stallTimeoutMs: 10_000, retry: DEFAULT_RETRY_POLICY });
    let index: Buffer;
    try {
      index = (await fetchArtifact(session.client, 'private/app', 'nix2oci-cache', CACHE_INDEX_ARTIFACT_TYPE, MAX_INDEX_BYTES))!.bytes;
    } finally {
      await session.close();
    }
    const basic = Buffer.from(`${USER}:${PASSWORD}`).toString('base64');
    for (const text of [index.toString(), cold.stdout, cold.stderr, again.stdout, again.stderr]) {
      expect(text).not.toContain(PASSWORD);
      expect(text).not.toContain(basic);
    }
    expect(index.toString()).not.toContain(USER);
  });

  it('runs the CI recipe\'s script (docs/ci.md): a second, fresh runner takes every layer from the registry and prints the same digest', () => {
    const check = spawnSync('shellcheck', [join(REPO, 'scripts/ci-build.sh')], { encoding: 'utf8' });
    if (hasTool('shellcheck')) expect(check.stdout).toBe('');
    const job = (n: number) => {
      const work = mkdtempSync(join(dir, 'ci-job-'));
      const result = spawnSync('bash', [join(REPO, 'scripts/ci-build.sh')], {
        cwd: work,
        encoding: 'utf8',
        env: {
          ...process.env,
          HOME: work, // a fresh runner: no auth files, an empty layer cache
          XDG_CACHE_HOME: join(work, 'cache'),
          IMAGE: `${registry.host}/ci/app:run-${n}`,
          CLOSURE: join(REPO, 'layers/demo/demo.closure'),
          RECIPE: join(REPO, 'layers/demo/image.json'),
          REGISTRY_USER: USER,
          REGISTRY_PASSWORD: PASSWORD,
          NIX2OCI: `${process.execPath} ${CLI}`,
          NIX2OCI_FLAGS: `--cert-dir ${join(dir, 'certs')} --json`,
          GITHUB_OUTPUT: join(work, 'github-output'),
        },
      });
      expect(result.status, result.stderr).toBe(0);
      expect(result.stdout + result.stderr).not.toContain(PASSWORD);
      return { stdout: result.stdout, stderr: result.stderr, work };
    };
    const first = job(1);
    const second = job(2);
    const digest = readFileSync(join(second.work, 'image.digest'), 'utf8').trim();
    expect(second.stdout).toBe(`${registry.host}/ci/app:run-2@${digest}\n`);
    expect(first.stdout).toBe(`${registry.host}/ci/app:run-1@${digest}\n`);
    expect(readFileSync(join(second.work, 'github-output'), 'utf8')).toBe(`digest=${digest}\n`);
    expect(second.stderr).toContain('already holds this image');
    expect(second.stderr).not.toMatch(/uploaded/);
    // The auth file it wrote is gone.
    expect(readdirSync(second.work).sort()).toEqual(['cache', 'github-output', 'image.digest']);
  });
});
