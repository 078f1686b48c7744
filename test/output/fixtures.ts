import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, mkdtempSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LayerSource } from '../../src/layer/types.js';
import type { Compression } from '../../src/layer/format.js';
import { asLayer, writeLayer } from '../helpers/layers.js';
import { assembleImage, type AssembleOptions } from '../../src/model/assemble.js';
import type { ImageConfigSpec } from '../../src/model/config.js';
import type { Image } from '../../src/model/image.js';

/** A store-path-like name with a valid Nix base32 hash. */
export function storeName(seed: string, name: string): string {
  const alphabet = '0123456789abcdfghijklmnpqrsvwxyz';
  const hash = createHash('sha256').update(seed).digest();
  let out = '';
  for (let i = 0; i < 32; i++) out += alphabet[hash[i]! % 32];
  return `${out}-${name}`;
}

export type FixtureEntry =
  | { type: 'directory'; name: string; mode?: number }
  | { type: 'file'; name: string; mode?: number; text: string }
  | { type: 'copy'; name: string; mode?: number; from: string }
  | { type: 'symlink'; name: string; target: string };

/** Writes a layer blob with the project's layer writer (deterministic tar, optionally gzip, both digests). */
export async function makeLayer(dir: string, entries: FixtureEntry[], compression: Compression = 'gzip'): ReturnType<typeof writeLayer> {
  const source: LayerSource = async (sink) => {
    for (const e of entries) {
      if (e.type === 'directory') await sink.add({ type: 'directory', name: e.name, mode: e.mode ?? 0o755 });
      else if (e.type === 'symlink') await sink.add({ type: 'symlink', name: e.name, target: e.target });
      else if (e.type === 'file') {
        const body = Buffer.from(e.text);
        await sink.add({ type: 'file', name: e.name, mode: e.mode ?? 0o444, size: body.length, body });
      } else {
        await sink.add({ type: 'file', name: e.name, mode: e.mode ?? 0o555, size: statSync(e.from).size, body: createReadStream(e.from) });
      }
    }
  };
  return writeLayer(source, { compression, dir, mtime: 1 });
}

export const BUSYBOX_PATH = `/nix/store/${storeName('busybox', 'busybox-1.36')}`;
export const DATA_PATH = `/nix/store/${storeName('data', 'greeting-data')}`;

/** A two-layer image: static busybox in a store path, and a data path plus image-root symlinks. */
export async function demoLayers(dir: string, compression: Compression = 'gzip') {
  const bb = BUSYBOX_PATH.slice(1);
  const data = DATA_PATH.slice(1);
  const busybox = await makeLayer(
    dir,
    [
      { type: 'directory', name: 'nix' },
      { type: 'directory', name: 'nix/store' },
      { type: 'directory', name: bb, mode: 0o555 },
      { type: 'directory', name: `${bb}/bin`, mode: 0o555 },
      { type: 'copy', name: `${bb}/bin/busybox`, from: '/bin/busybox', mode: 0o555 },
      { type: 'symlink', name: `${bb}/bin/sh`, target: 'busybox' },
    ],
    compression,
  );
  const rest = await makeLayer(
    dir,
    [
      { type: 'directory', name: 'bin' },
      { type: 'symlink', name: 'bin/sh', target: `${BUSYBOX_PATH}/bin/busybox` },
      { type: 'directory', name: 'nix' },
      { type: 'directory', name: 'nix/store' },
      { type: 'directory', name: data, mode: 0o555 },
      { type: 'file', name: `${data}/greeting.txt`, text: 'hello from a nix2oci layer\n', mode: 0o444 },
      { type: 'file', name: `${data}/run.sh`, text: '#!/bin/sh\necho "$@"\n', mode: 0o555 },
      { type: 'directory', name: 'tmp', mode: 0o1777 },
    ],
    compression,
  );
  return [
    asLayer(busybox, [BUSYBOX_PATH]),
    asLayer(rest, [DATA_PATH, 'image-root']),
  ];
}

export function demoConfig(overrides: Partial<ImageConfigSpec> = {}): ImageConfigSpec {
  return {
    architecture: 'amd64',
    os: 'linux',
    env: [`PATH=${BUSYBOX_PATH}/bin:/bin`, 'GREETING=hi'],
    entrypoint: [`${BUSYBOX_PATH}/bin/busybox`],
    cmd: ['echo', 'default', 'command'],
    workingDir: '/tmp',
    exposedPorts: ['8000/tcp', '53/udp'],
    volumes: ['/data'],
    labels: { 'org.opencontainers.image.title': 'nix2oci test' },
    stopSignal: 'SIGINT',
    ...overrides,
  };
}

export function tempDir(prefix = 'nix2oci-oci-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** The demo image, assembled; `nonce` goes into a label so parallel runs never share an image ID in podman. */
export async function demoImage(
  dir: string,
  options: Partial<AssembleOptions> & { compression?: Compression; nonce?: string } = {},
): Promise<{ image: Image; warnings: string[] }> {
  const layers = options.layers ?? (await demoLayers(dir, options.compression ?? 'gzip'));
  const config = options.config ?? demoConfig(options.nonce ? { labels: { 'test.nonce': options.nonce } } : {});
  return assembleImage({
    layers,
    config,
    created: options.created ?? new Date(1_700_000_000_000),
    tags: options.tags ?? ['nix2oci-test/demo:latest'],
    ...(options.format && { format: options.format }),
    ...(options.manifestFormat && { manifestFormat: options.manifestFormat }),
  });
}

/** Runs a command and returns its stdout; throws with its stderr on failure. */
export function run(cmd: string, args: string[], options: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): string {
  return execFileSync(cmd, args, {
    encoding: 'utf8',
    ...(options.cwd !== undefined && { cwd: options.cwd }),
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...options.env },
    timeout: 120_000,
    maxBuffer: 64 << 20,
  });
}
