import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * podman as it runs on these machines: runc (crun fails on cgroups here) and no default rlimits
 * (refused here), through a containers.conf of our own.
 */
let conf: string | undefined;
function containersConf(): string {
  if (!conf) {
    conf = join(mkdtempSync(join(tmpdir(), 'nix2oci-podman-')), 'containers.conf');
    writeFileSync(conf, '[containers]\ndefault_ulimits = []\n');
  }
  return conf;
}

export function podman(args: string[], options: { timeout?: number } = {}): string {
  return execFileSync('podman', args, {
    encoding: 'utf8',
    env: { ...process.env, CONTAINERS_CONF: containersConf() },
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: options.timeout ?? 120_000,
    maxBuffer: 64 << 20,
  });
}

/** `podman load -i`; returns the loaded image's ID. */
export function podmanLoad(archive: string): string {
  const out = podman(['load', '-q', '-i', archive]);
  const match = /Loaded image(?:\(s\))?: (.+)/.exec(out);
  if (!match) throw new Error(`podman load printed no image: ${out}`);
  return podman(['image', 'inspect', '--format', '{{.Id}}', match[1]!.trim()]).trim();
}

/** Runs a container to completion with no network and returns its stdout. */
export function podmanRun(image: string, args: string[] = [], runOptions: string[] = [], options: { timeout?: number } = {}): string {
  return podman(['--runtime', 'runc', 'run', '--rm', '--network', 'none', ...runOptions, image, ...args], options);
}

export function podmanRemove(...images: string[]): void {
  try {
    podman(['rmi', '--force', ...images]);
  } catch {
    // Already gone.
  }
}
