import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, mkdtempSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import tar from 'tar-stream';
import type { Compression, LayerBlob } from '../../src/layers/types.js';
import { assembleImage, type AssembleOptions } from '../../src/oci/assemble.js';
import type { ImageConfigSpec } from '../../src/oci/config.js';
import type { Image } from '../../src/oci/image.js';

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

const MTIME = new Date(1000);

/** Writes a layer blob the way a layer writer would: deterministic tar, optionally gzip, with both digests. */
export async function makeLayer(dir: string, entries: FixtureEntry[], compression: Compression = 'gzip'): Promise<LayerBlob> {
  const pack = tar.pack();
  const file = join(dir, `layer-${Math.random().toString(16).slice(2)}`);
  const uncompressed = createHash('sha256');
  let uncompressedSize = 0;
  const measure = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      uncompressed.update(chunk);
      uncompressedSize += chunk.length;
      cb(null, chunk);
    },
  });
  const compressed = createHash('sha256');
  const measureOut = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      compressed.update(chunk);
      cb(null, chunk);
    },
  });
  const stages = compression === 'gzip' ? [createGzip({ level: 6 })] : [new PassThrough()];
  const done = pipeline(pack as unknown as NodeJS.ReadableStream, measure, ...stages, measureOut, createWriteStream(file));
  for (const e of entries) {
    const base = { name: e.name, mtime: MTIME, uid: 0, gid: 0, uname: '', gname: '' };
    if (e.type === 'directory') {
      await new Promise<void>((ok, fail) => pack.entry({ ...base, type: 'directory', mode: e.mode ?? 0o755 }, (err) => (err ? fail(err) : ok())));
    } else if (e.type === 'symlink') {
      await new Promise<void>((ok, fail) =>
        pack.entry({ ...base, type: 'symlink', linkname: e.target, mode: 0o777 }, (err) => (err ? fail(err) : ok())),
      );
    } else if (e.type === 'file') {
      const body = Buffer.from(e.text);
      await new Promise<void>((ok, fail) =>
        pack.entry({ ...base, type: 'file', mode: e.mode ?? 0o444, size: body.length }, body, (err) => (err ? fail(err) : ok())),
      );
    } else {
      const size = statSync(e.from).size;
      await new Promise<void>((ok, fail) => {
        const sink = pack.entry({ ...base, type: 'file', mode: e.mode ?? 0o555, size }, (err) => (err ? fail(err) : ok()));
        createReadStream(e.from).pipe(sink as unknown as NodeJS.WritableStream);
      });
    }
  }
  pack.finalize();
  await done;
  return {
    file,
    digest: `sha256:${compressed.digest('hex')}`,
    size: statSync(file).size,
    diffId: `sha256:${uncompressed.digest('hex')}`,
    uncompressedSize,
    compression,
  };
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
    { blob: busybox, contents: [BUSYBOX_PATH] },
    { blob: rest, contents: [DATA_PATH, 'image-root'] },
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
