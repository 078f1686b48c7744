import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cliOk, REPO } from '../helpers/cli.js';
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
});
