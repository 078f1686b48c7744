import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { client, startDaemon, succeeds, type Client, type Daemon } from './containerd.js';

export interface Dockerd extends Daemon {
  /** Runs the `docker` client against this daemon and returns its stdout. */
  docker: Client;
}

/**
 * Starts Debian's dockerd as root in a temp directory of its own (data root, exec root, socket,
 * pid file, an empty daemon.json) with what this sandbox allows: no iptables, no bridge, the vfs
 * storage driver. It starts its own containerd under the exec root; containers need `--network none`.
 */
export async function startDockerd(): Promise<Dockerd> {
  const dir = mkdtempSync(join(tmpdir(), 'nix2oci-docker-'));
  const configFile = join(dir, 'daemon.json');
  writeFileSync(configFile, '{}\n');
  const host = ['--host', `unix://${join(dir, 'docker.sock')}`];
  const daemon = await startDaemon(
    'dockerd',
    [...host, '--config-file', configFile, '--data-root', join(dir, 'data'), '--exec-root', join(dir, 'exec'), '--pidfile', join(dir, 'dockerd.pid'),
      '--iptables=false', '--ip6tables=false', '--ip-masq=false', '--bridge=none', '--storage-driver=vfs'],
    dir,
    () => succeeds('docker', [...host, 'version']),
  );
  return { ...daemon, docker: client('docker', host, { DOCKER_CONFIG: join(dir, 'client') }) };
}
