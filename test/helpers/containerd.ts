import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { GZIP_MEMBER_HEADER } from '../../src/layer/format.js';
import { cliOk } from './cli.js';

/** The first bytes of every zstd frame. */
const ZSTD_FRAME_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);
import { exportClosure, nixBuild, pathInfoJson } from './nix.js';
import { useScratchDirs } from './scratch.js';

/**
 * An image built by nix2oci from a real Nix closure (static busybox + a 10 MB data file), so its
 * data layer is several gzip members (one per 4 MiB of tar). Running it prints the sha256 of the data
 * file as read inside the container: `expectedOutput`.
 */
export interface MultiMemberImage {
  name: string;
  ociArchive: string;
  dockerArchive: string;
  /** Gzip members (or zstd frames) in the data layer's blob. */
  dataLayerMembers: number;
  /** The data layer's digest. */
  dataLayer: string;
  expectedOutput: string;
}

/** With zstd, only the oci-archive is built (`dockerArchive` is empty): Docker archives cannot carry zstd. */
export function buildMultiMemberImage(dir: string, name = 'localhost/nix2oci-multimember:test', compression: 'gzip' | 'zstd' = 'gzip'): MultiMemberImage {
  const [top] = nixBuild(`
    let
      bb = mkDrv "busybox-multimember-test" ''
        mkdir -p $out/bin
        cp /bin/busybox $out/bin/busybox
        ln -s busybox $out/bin/sha256sum
      '';
      data = mkDrv "data-multimember-test" ''
        mkdir -p $out/share
        seq 1 1500000 > $out/share/data
      '';
    in mkDrv "multimember-test-top" "echo \${bb} \${data} > $out"`);
  const closure = join(dir, 'multimember.closure');
  const paths = exportClosure([top!], closure);
  const pathInfo = join(dir, 'multimember.path-info.json');
  writeFileSync(pathInfo, pathInfoJson([top!]));
  const busybox = paths.find((p) => p.endsWith('-busybox-multimember-test'))!;
  const data = paths.find((p) => p.endsWith('-data-multimember-test'))!;
  const dataFile = `${data}/share/data`;

  const build = (output: string, format: string) =>
    cliOk(['build-image', '-q', '--json', '--closure', closure, '--path-info', pathInfo, '--entrypoint', JSON.stringify([`${busybox}/bin/sha256sum`, dataFile]),
      '--tag', name, '--format', format, '--output', output, '--compression', compression]).stdout;
  const ociArchive = join(dir, `multimember.${compression}.oci.tar`);
  const dockerArchive = compression === 'gzip' ? join(dir, 'multimember.docker.tar') : '';
  if (dockerArchive) build(dockerArchive, 'docker-archive');
  const summary = JSON.parse(build(ociArchive, 'oci-archive')) as { layers: { digest: string; contents: string[] }[] };
  const dataLayer = summary.layers.find((l) => l.contents.includes(data))!;
  const layout = join(dir, `multimember.${compression}.oci`);
  mkdirSync(layout);
  execFileSync('tar', ['-xf', ociArchive, '-C', layout]);
  const blob = readFileSync(join(layout, 'blobs/sha256', dataLayer.digest.slice('sha256:'.length)));
  const frameStart = compression === 'gzip' ? GZIP_MEMBER_HEADER : ZSTD_FRAME_MAGIC;
  const dataLayerMembers = blob.toString('latin1').split(frameStart.toString('latin1')).length - 1;
  const hash = createHash('sha256').update(readFileSync(dataFile)).digest('hex');
  return { name, ociArchive, dockerArchive, dataLayerMembers, dataLayer: dataLayer.digest, expectedOutput: `${hash}  ${dataFile}\n` };
}

/**
 * A copy of a docker-archive whose config names a wrong diffID for the first layer, tagged `name`:
 * a runtime that computes diffIDs from the decompressed layer must refuse it.
 */
export function withWrongDiffId(dockerArchive: string, dir: string, name: string): string {
  const unpacked = mkdtempSync(join(dir, 'wrong-diffid-'));
  execFileSync('tar', ['-xf', dockerArchive, '-C', unpacked]);
  const manifest = JSON.parse(readFileSync(join(unpacked, 'manifest.json'), 'utf8')) as { Config: string; RepoTags: string[] }[];
  const configFile = join(unpacked, manifest[0]!.Config);
  const config = JSON.parse(readFileSync(configFile, 'utf8')) as { rootfs: { diff_ids: string[] } };
  const first = config.rootfs.diff_ids[0]!;
  config.rootfs.diff_ids[0] = first.slice(0, -1) + (first.endsWith('0') ? '1' : '0');
  writeFileSync(configFile, JSON.stringify(config));
  manifest[0]!.RepoTags = [name];
  writeFileSync(join(unpacked, 'manifest.json'), JSON.stringify(manifest));
  const out = `${unpacked}.tar`;
  execFileSync('tar', ['-cf', out, '-C', unpacked, '.']);
  return out;
}

export interface Daemon {
  dir: string;
  /** The daemon's log so far. */
  log(): string;
  /** SIGTERM (SIGKILL after 15 s), then removes `dir`. */
  stop(): Promise<void>;
}

/**
 * Starts `command` with its output in `dir`/daemon.log and waits (up to 30 s) until `ready()` is true.
 */
export async function startDaemon(command: string, args: string[], dir: string, ready: () => boolean): Promise<Daemon> {
  const logFile = join(dir, 'daemon.log');
  const logFd = openSync(logFile, 'w');
  const child = spawn(command, args, { cwd: dir, stdio: ['ignore', logFd, logFd] });
  closeSync(logFd);
  const log = () => readFileSync(logFile, 'utf8');
  let exited = false;
  const gone = new Promise<void>((resolve) =>
    child.once('exit', () => {
      exited = true;
      resolve();
    }),
  );
  const stop = async () => {
    if (!exited) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await gone;
      clearTimeout(timer);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 30_000;
  while (!ready()) {
    if (exited || Date.now() > deadline) {
      const why = exited ? 'exited at start' : 'did not become ready in 30 s';
      const text = log();
      await stop();
      throw new Error(`${command} ${why}:\n${text}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  return { dir, log, stop };
}

export type Client = (args: string[], options?: { timeout?: number }) => string;

/** A daemon's command-line client: `command ...base ...args` with `env` added, returning stdout. */
export function client(command: string, base: string[], env: Record<string, string>): Client {
  return (args, options = {}) =>
    execFileSync(command, [...base, ...args], {
      encoding: 'utf8',
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: options.timeout ?? 60_000,
      maxBuffer: 64 << 20,
    });
}

/** True when `command args` exits 0. */
export function succeeds(command: string, args: string[]): boolean {
  try {
    execFileSync(command, args, { stdio: 'ignore', timeout: 10_000 });
    return true;
  } catch {
    return false;
  }
}

export interface Containerd extends Daemon {
  /** Runs `ctr` against this containerd, in its own namespace, and returns its stdout. */
  ctr: Client;
}

/**
 * Starts Debian's containerd as root in a temp directory of its own: its own root, state and socket,
 * the `native` snapshotter (overlayfs may be refused in a sandbox), no CRI plugin. Containers run
 * with runc through io.containerd.runc.v2.
 */
export async function startContainerd(): Promise<Containerd> {
  const dir = mkdtempSync(join(tmpdir(), 'nix2oci-containerd-'));
  const socket = join(dir, 'containerd.sock');
  const config = join(dir, 'config.toml');
  writeFileSync(
    config,
    [
      'version = 2',
      `root = "${join(dir, 'root')}"`,
      `state = "${join(dir, 'state')}"`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.overlayfs", "io.containerd.snapshotter.v1.btrfs",',
      '  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]',
      '[grpc]',
      `  address = "${socket}"`,
      '[ttrpc]',
      `  address = "${socket}.ttrpc"`,
      '[debug]',
      '  address = ""',
      '[metrics]',
      '  address = ""',
      '',
    ].join('\n'),
  );
  mkdirSync(join(dir, 'fifo'));
  const base = ['--address', socket, '--namespace', 'nix2oci-test'];
  const daemon = await startDaemon('containerd', ['--config', config], dir, () => succeeds('ctr', [...base, 'version']));
  const run = client('ctr', base, { CONTAINERD_SNAPSHOTTER: 'native' });
  // `ctr run` needs its fifos somewhere: keep them in our directory, not /run/containerd.
  const ctr: Client = (args, options) => run(args[0] === 'run' ? ['run', '--fifo-dir', join(dir, 'fifo'), ...args.slice(1)] : args, options);
  return { ...daemon, ctr };
}

/**
 * Call in a describe block: before its tests, builds the multi-member image and starts a daemon with
 * `start`; after them, stops the daemon. The returned object is filled in by then.
 */
export function useDaemonAndImage<T extends Daemon>(start: () => Promise<T>): { daemon: T; image: MultiMemberImage; dir: string } {
  const scratch = useScratchDirs();
  const fixture = {} as { daemon: T; image: MultiMemberImage; dir: string };
  beforeAll(async () => {
    fixture.dir = scratch('nix2oci-e2e-daemon-');
    fixture.image = buildMultiMemberImage(fixture.dir);
    fixture.daemon = await start();
  });
  afterAll(async () => {
    await fixture.daemon?.stop();
  });
  return fixture;
}
