import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cliOk, REPO, runCli } from '../helpers/cli.js';
import { startRegistry, type RunningRegistry } from '../helpers/registry.js';
import { tools } from '../helpers/tools.js';

describe.runIf(tools('docker-registry', 'skopeo'))('build-image --push', () => {
  let registry: RunningRegistry;
  let dir: string;
  beforeAll(async () => {
    registry = await startRegistry();
    dir = mkdtempSync(join(tmpdir(), 'nix2oci-e2e-push-'));
  });
  afterAll(async () => {
    await registry?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('builds, writes the archive and pushes the same image to a real registry', () => {
    const out = join(dir, 'demo.tar');
    const digestFile = join(dir, 'digest');
    const result = cliOk([
      'build-image', '--closure', join(REPO, 'layers/demo/demo.closure'), '--recipe', join(REPO, 'layers/demo/image.json'),
      '--output', out, '--json', '--push', `${registry.host}/nix2oci/demo:e2e`, '--tls-verify=false', '--digestfile', digestFile,
    ]);
    const summary = JSON.parse(result.stdout.slice(0, result.stdout.lastIndexOf('}') + 1));
    expect(readFileSync(digestFile, 'utf8').trim()).toBe(summary.manifestDigest);
    const remote = JSON.parse(execFileSync('skopeo', ['inspect', '--tls-verify=false', `docker://${registry.host}/nix2oci/demo:e2e`], { encoding: 'utf8' }));
    expect(remote.Digest).toBe(summary.manifestDigest);
    expect(remote.Layers).toEqual(summary.layers.map((l: { digest: string }) => l.digest));
  });

  it.each([['with the cache', []], ['without a cache', ['--no-cache']]])(
    'pushes without --output %s: no archive is written, and the registry gets the image an archive build makes',
    (_, cacheFlags) => {
      const work = mkdtempSync(join(dir, 'push-only-'));
      const demo = ['--closure', join(REPO, 'layers/demo/demo.closure'), '--recipe', join(REPO, 'layers/demo/image.json')];
      const archived = JSON.parse(cliOk(['build-image', ...demo, '-q', '--json', '--output', join(dir, 'reference.tar')]).stdout) as { manifestDigest: string };
      const ref = `${registry.host}/nix2oci/demo:push-only-${cacheFlags.length}`;
      const result = cliOk(['build-image', ...demo, ...cacheFlags, '--push', ref, '--tls-verify=false', '-q'], { cwd: work, env: { TMPDIR: work } });
      expect(result.stdout.trim()).toBe(`${ref}@${archived.manifestDigest}`);
      // Nothing was written where the build ran, and its temporary files are gone.
      expect(readdirSync(work)).toEqual([]);
      const copy = join(dir, `pulled-${cacheFlags.length}`);
      execFileSync('skopeo', ['copy', '--src-tls-verify=false', `docker://${ref}`, `oci:${copy}`], { stdio: 'ignore' });
      const index = JSON.parse(readFileSync(join(copy, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
      expect(index.manifests[0]!.digest).toBe(archived.manifestDigest);
    },
  );

  it('refuses a build with neither --output nor --push, and --push with --output -', () => {
    const demo = ['--closure', join(REPO, 'layers/demo/demo.closure')];
    expect(runCli(['build-image', ...demo]).stderr).toBe('nix2oci: build-image needs --output PATH, --push REF, or both\n');
    const both = runCli(['build-image', ...demo, '--output', '-', '--push', `${registry.host}/x:y`]);
    expect([both.code, both.stderr]).toEqual([1, 'nix2oci: --push cannot be combined with --output - (standard output)\n']);
  });
});
