import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { sha256 } from './test-image.js';

/**
 * Checks a pushed image with the real tools: skopeo inspect, skopeo copy back (every blob and the
 * manifest compared by digest), podman pull + run. `access` holds the tools' TLS and login flags.
 */
export interface RegistryAccess {
  tlsVerify: boolean;
  certDir?: string;
  creds?: string;
}

const run = promisify(execFile);

function srcFlags(access: RegistryAccess): string[] {
  return [
    `--src-tls-verify=${access.tlsVerify}`,
    ...(access.certDir ? ['--src-cert-dir', access.certDir] : []),
    ...(access.creds ? ['--src-creds', access.creds] : []),
  ];
}

export async function skopeoInspect(ref: string, access: RegistryAccess): Promise<{ Digest: string; Layers: string[] }> {
  const { stdout } = await run('skopeo', [
    'inspect',
    `--tls-verify=${access.tlsVerify}`,
    ...(access.certDir ? ['--cert-dir', access.certDir] : []),
    ...(access.creds ? ['--creds', access.creds] : []),
    `docker://${ref}`,
  ]);
  return JSON.parse(stdout) as { Digest: string; Layers: string[] };
}

/** Copies the image back into a `dir:` directory and returns the digests of its manifest and of each blob file. */
export async function skopeoCopyBack(ref: string, access: RegistryAccess): Promise<{ manifestDigest: string; blobs: string[] }> {
  const dir = mkdtempSync(join(tmpdir(), 'nix2oci-copyback-'));
  try {
    await run('skopeo', ['copy', '--quiet', '--preserve-digests', ...srcFlags(access), `docker://${ref}`, `dir:${dir}`]);
    const manifestDigest = sha256(readFileSync(join(dir, 'manifest.json')));
    const blobs: string[] = [];
    for (const name of readdirSync(dir)) {
      if (!/^[0-9a-f]{64}$/.test(name)) continue;
      const digest = sha256(readFileSync(join(dir, name)));
      if (digest !== `sha256:${name}`) throw new Error(`copied blob ${name} has digest ${digest}`);
      blobs.push(digest);
    }
    return { manifestDigest, blobs: blobs.sort() };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * `podman pull` then `podman run` in a private storage (so tests never touch the machine's images),
 * with the runc runtime and no ulimits (the sandbox this runs in allows no rlimit changes).
 */
export async function podmanPullAndRun(ref: string, access: RegistryAccess, command: string[] = []): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'nix2oci-podman-'));
  const conf = join(dir, 'containers.conf');
  writeFileSync(conf, '[containers]\ndefault_ulimits = []\n');
  const podman = (args: string[]) =>
    run(
      'podman',
      ['--root', join(dir, 'root'), '--runroot', join(dir, 'runroot'), '--storage-driver', 'vfs', '--runtime', 'runc', ...args],
      { env: { ...process.env, CONTAINERS_CONF: conf }, maxBuffer: 16 << 20 },
    );
  try {
    await podman([
      'pull',
      '--quiet',
      `--tls-verify=${access.tlsVerify}`,
      ...(access.certDir ? ['--cert-dir', access.certDir] : []),
      ...(access.creds ? ['--creds', access.creds] : []),
      ref,
    ]);
    const { stdout } = await podman(['run', '--rm', '--network', 'none', ref, ...command]);
    return stdout;
  } finally {
    await podman(['rm', '--all', '--force']).catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  }
}
