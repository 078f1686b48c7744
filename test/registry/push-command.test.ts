import { execFile, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startRegistry, type RunningRegistry } from '../helpers/registry.js';
import { tools } from '../helpers/tools.js';
import { CLI_CHILD, compileForChild } from './support/compile.js';
import { makePki } from './support/pki.js';
import { busyboxLayer, randomLayer, sha256, writeOciLayout, writeTestImage, type TestImage } from './support/test-image.js';
import { skopeoInspect } from './support/verify.js';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** `nix2oci push` as a user runs it: a process, its exit status and what it prints. */
describe.runIf(tools('docker-registry', 'skopeo', 'htpasswd'))('nix2oci push', () => {
  let outDir: string;
  let registry: RunningRegistry;
  let work: string;
  let image: TestImage;
  let layout: string;

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'nix2oci-push-cli-'));
    [outDir, registry] = await Promise.all([compileForChild(['src/cli/push-command.ts']), startRegistry()]);
    image = await writeTestImage(join(work, 'image'), { layers: [busyboxLayer(), randomLayer('cli', 40_000)] });
    layout = join(work, 'layout');
    writeOciLayout(layout, image);
  });
  afterAll(async () => {
    await registry?.stop();
    if (outDir) rmSync(dirname(outDir), { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  });

  const push = (...args: string[]): Promise<Run> =>
    new Promise((resolve) => {
      execFile(process.execPath, [CLI_CHILD, outDir, 'push', ...args], { env: { ...process.env, HOME: work } }, (err, stdout, stderr) =>
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
      );
    });

  it('pushes an OCI layout with extra tags, prints progress lines and the reference last, writes --digestfile', async () => {
    const digestFile = join(work, 'pushed.digest');
    const run = await push(layout, '--registry', `${registry.host}/cli/app:1.0`, '--tls-verify=false', '--tag', 'stable', '--digestfile', digestFile);
    expect(run.stderr).toMatch(/^pushing 3 blobs/);
    expect(run.code).toBe(0);
    const digest = sha256(image.manifestBytes);
    expect(run.stdout).toBe(`${registry.host}/cli/app:1.0@${digest}\n`);
    expect(readFileSync(digestFile, 'utf8')).toBe(digest);
    expect((await skopeoInspect(`${registry.host}/cli/app:stable`, { tlsVerify: false })).Digest).toBe(digest);
  });

  it('pushes oci-archive and docker-archive files as skopeo wrote them', async () => {
    for (const transport of ['oci-archive', 'docker-archive'] as const) {
      const archive = join(work, `image.${transport}.tar`);
      execFileSync('skopeo', ['copy', '--quiet', `oci:${layout}:latest`, `${transport}:${archive}${transport === 'docker-archive' ? ':cli/app:latest' : ''}`]);
      const run = await push(archive, '--registry', `${registry.host}/cli/${transport}`, '--tls-verify=false', '--quiet');
      expect(run.stderr).toBe('');
      expect(run.code).toBe(0);
      const pushed = run.stdout.trim().split('@')[1];
      expect((await skopeoInspect(`${registry.host}/cli/${transport}:latest`, { tlsVerify: false })).Digest).toBe(pushed);
      const roundTrip = JSON.parse(execFileSync('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${registry.host}/cli/${transport}:latest`], { encoding: 'utf8' }));
      expect(roundTrip.layers).toHaveLength(2);
    }
  });

  it('fails in one line, exit status 1, for a missing source, a bad reference and a registry that is down', async () => {
    const port = await freePort();
    const cases: Array<[string[], RegExp]> = [
      [[join(work, 'nope'), '--registry', `${registry.host}/x`], /^nix2oci: cannot read image .*nope: no such file or directory\n$/],
      [[layout, '--registry', `${registry.host}/Bad/Name`], /^nix2oci: invalid image reference "127\.0\.0\.1:\d+\/Bad\/Name": repository component "Bad" must be lowercase/],
      [[layout, '--registry', `127.0.0.1:${port}/x`, '--tls-verify=false'], /^nix2oci: cannot connect to 127\.0\.0\.1:\d+: connection refused \(is the registry running\?\)\n$/],
      [[layout, '--registry', `${registry.host}/x`, '--jobs', '0', '--tls-verify=false'], /^nix2oci: --jobs must be a whole number from 1 to 64\n$/],
    ];
    for (const [args, message] of cases) {
      const run = await push(...args);
      expect(run.code).toBe(1);
      expect(run.stderr).toMatch(message);
      expect(run.stderr.trim().split('\n')).toHaveLength(1);
      expect(run.stdout).toBe('');
    }
  });

  it('never prints the password, whatever fails', async () => {
    const pki = makePki();
    const password = 'Cli-Secret-Passw0rd';
    const secure = await startRegistry({
      tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.caCert },
      htpasswd: execFileSync('htpasswd', ['-Bbn', 'cli', password], { encoding: 'utf8' }),
    });
    try {
      const certDir = join(work, 'certs');
      mkdirSync(certDir, { recursive: true });
      writeFileSync(join(certDir, 'ca.crt'), pki.caCert);
      const runs = [
        await push(layout, '--registry', `${secure.host}/s/app`, '--cert-dir', certDir, '--creds', `cli:${password}x`),
        await push(layout, '--registry', `${secure.host}/s/app`, '--creds', `cli:${password}`), // unknown CA
        await push(layout, '--registry', `${secure.host}/s/app`, '--cert-dir', certDir, '--creds', `cli:${password}`),
      ];
      expect(runs.map((r) => r.code)).toEqual([1, 1, 0]);
      expect(runs[0]!.stderr).toMatch(/refused the credentials of user "cli" \(from --creds\) \(401\)\n$/);
      expect(runs[1]!.stderr).toMatch(/unknown authority/);
      const basic = Buffer.from(`cli:${password}`).toString('base64');
      for (const run of runs) {
        expect(`${run.stdout}${run.stderr}`).not.toContain(password);
        expect(`${run.stdout}${run.stderr}`).not.toContain(basic);
      }
    } finally {
      await secure.stop();
    }
  });
});
