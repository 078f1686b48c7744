import { describe, it, expect, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 as zlibCrc32, deflateRawSync, gunzipSync } from 'node:zlib';
import { writeLayer } from '../helpers/layers.js';
import { FRAME_SIZE } from '../../src/layer/format.js';
import { Turns } from '../../src/layer/codec.js';
import { asLayer } from '../helpers/layers.js';
import type { LayerSource } from '../../src/layer/types.js';
import { assembleImage } from '../../src/model/assemble.js';
import { writeImage } from '../../src/output/write.js';
import { UserError } from '../../src/util/errors.js';
import { tools } from '../helpers/tools.js';
import { podman, podmanLoad, podmanRemove, podmanRun } from '../helpers/podman.js';
import { tarToBuffer } from '../tar/tar-tools.js';

const dirs: string[] = [];
function freshDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'nix2oci-members-'));
  dirs.push(dir);
  return dir;
}
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

const sha256 = (bytes: Buffer) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

/** Log-like text with random words: compresses about as well as binaries do (2–3×), cheap to make. */
function logText(size: number, seed: number): Buffer {
  const out = Buffer.alloc(size);
  let x = seed >>> 0 || 1;
  const words = ['store', 'lib', 'python3.11', 'torch', 'kernel', 'rocm', 'hip', 'vllm', '/nix/store/', 'so.1', '\n'];
  for (let i = 0; i < size; ) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const word = (x >>> 0) % 3 === 0 ? (x >>> 8).toString(36) : words[(x >>> 4) % words.length]!;
    i += out.write(word + ' ', i);
  }
  return out;
}

/** A layer of 3.4 parts: several members, the last one partial. */
const BIG = logText(Math.floor(FRAME_SIZE * 3.4), 7);
const bigSource: LayerSource = async (sink) => {
  await sink.add({ type: 'directory', name: 'data', mode: 0o755 });
  await sink.add({ type: 'file', name: 'data/big', mode: 0o644, size: BIG.length, body: BIG });
  await sink.add({ type: 'file', name: 'data/small', mode: 0o644, size: 5, body: Buffer.from('tail\n') });
};

/** The format spelled out: the tar cut every FRAME_SIZE bytes, each part its own gzip member. */
function expectedMembers(tar: Buffer, level: number): Buffer {
  const members: Buffer[] = [];
  for (let offset = 0; offset < tar.length; offset += FRAME_SIZE) {
    const part = tar.subarray(offset, offset + FRAME_SIZE);
    const trailer = Buffer.alloc(8);
    trailer.writeUInt32LE(crc32(part), 0);
    trailer.writeUInt32LE(part.length, 4);
    members.push(Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]), deflateRawSync(part, { level }), trailer);
  }
  return Buffer.concat(members);
}

function crc32(bytes: Buffer): number {
  return zlibCrc32(bytes) >>> 0;
}


describe('gzip layers of several parts', () => {
  it('are the tar cut every FRAME_SIZE bytes, each part deflated alone into a gzip member, in order', async () => {
    const tar = await tarToBuffer(bigSource, 1, 64 << 10);
    expect(tar.length).toBeGreaterThan(3 * FRAME_SIZE);
    const blob = await writeLayer(bigSource, { compression: 'gzip', dir: freshDir(), mtime: 1 });
    const bytes = readFileSync(blob.file);
    expect(bytes.equals(expectedMembers(tar, 6))).toBe(true);
    expect(blob.diffId).toBe(sha256(tar));
    expect(blob.uncompressedSize).toBe(tar.length);
    expect(blob.digest).toBe(sha256(bytes));
    expect(blob.size).toBe(bytes.length);
    expect(gunzipSync(bytes).equals(tar)).toBe(true); // a multi-member reader sees the one tar
  });

  it('a layer smaller than one part is a single member', async () => {
    const source: LayerSource = async (sink) => {
      await sink.add({ type: 'file', name: 'f', mode: 0o644, size: 100_000, body: BIG.subarray(0, 100_000) });
    };
    const blob = await writeLayer(source, { compression: 'gzip', dir: freshDir(), mtime: 1 });
    expect(readFileSync(blob.file).equals(expectedMembers(await tarToBuffer(source), 6))).toBe(true);
    expect(readFileSync(blob.file).indexOf(Buffer.from([0x1f, 0x8b, 8, 0]), 1)).toBe(-1);
  });

  it('gives the same bytes whatever the number of jobs, for one layer or several at once', async () => {
    const one = await writeLayer(bigSource, { compression: 'gzip', dir: freshDir(), mtime: 1, jobs: 1 });
    const many = await Promise.all([1, 2, 3].map(() => writeLayer(bigSource, { compression: 'gzip', dir: freshDir(), mtime: 1, jobs: 3 })));
    const own = await writeLayer(bigSource, { compression: 'gzip', dir: freshDir(), mtime: 1 });
    for (const blob of [...many, own]) expect({ digest: blob.digest, diffId: blob.diffId }).toEqual({ digest: one.digest, diffId: one.diffId });
  });

  it('refuses a jobs bound that is not a whole number of at least 1', async () => {
    expect(() => new Turns(0)).toThrow(UserError);
    await expect(writeLayer(bigSource, { compression: 'gzip', dir: freshDir(), mtime: 1, jobs: 1.5 })).rejects.toThrow(/jobs must be/);
  });

  it('leaves no temp file and frees its turns and parts when the source fails midway', async () => {
    const dir = freshDir();
    const failing: LayerSource = async (sink) => {
      await sink.add({ type: 'file', name: 'big', mode: 0o644, size: BIG.length, body: BIG });
      throw new UserError('source broke');
    };
    // One build's turns: one turn, three parts. Each failure leaves a part half-filled, which must come
    // back (else the fourth failure and the layer after would wait for a part for ever).
    const turns = new Turns(1);
    for (let i = 0; i < 4; i++) await expect(writeLayer(failing, { compression: 'gzip', dir, mtime: 1, turns })).rejects.toThrow('source broke');
    expect(readdirSync(dir)).toEqual([]);
    // Turns and parts came back: a layer with more parts than there are jobs still gets written.
    const blob = await writeLayer(bigSource, { compression: 'gzip', dir, mtime: 1, turns });
    expect(readdirSync(dir)).toEqual([blob.digest.slice('sha256:'.length)]);
  });

  it('pass gzip -t and decompress with gunzip to the diffID’d tar', async () => {
    const blob = await writeLayer(bigSource, { compression: 'gzip', dir: freshDir(), mtime: 1 });
    execFileSync('gzip', ['-t', blob.file]);
    const tar = execFileSync('sh', ['-c', 'gunzip -c < "$1"', 'sh', blob.file], { maxBuffer: 64 << 20 });
    expect(sha256(tar)).toBe(blob.diffId);
  });
});

/** An image whose one layer has several members: busybox and a 13 MiB file whose sha256 the container prints. */
async function manyMemberImage(dir: string): Promise<{ layout: string; archive: string; bigSha: string; members: number }> {
  const busybox = '/bin/busybox';
  const source: LayerSource = async (sink) => {
    await sink.add({ type: 'directory', name: 'bin', mode: 0o755 });
    await sink.add({ type: 'file', name: 'bin/busybox', mode: 0o755, size: statSync(busybox).size, body: createReadStream(busybox) });
    await sink.add({ type: 'symlink', name: 'bin/sh', target: 'busybox' });
    await sink.add({ type: 'directory', name: 'data', mode: 0o755 });
    await sink.add({ type: 'file', name: 'data/big', mode: 0o644, size: BIG.length, body: BIG });
  };
  const blobs = join(dir, 'blobs');
  execFileSync('mkdir', ['-p', blobs]);
  const blob = await writeLayer(source, { compression: 'gzip', dir: blobs, mtime: 1 });
  const config = { architecture: 'amd64', os: 'linux', env: [], entrypoint: ['/bin/busybox'], exposedPorts: [], volumes: [], labels: {} };
  const { image } = assembleImage({ layers: [asLayer(blob, ['busybox+data'])], config, created: new Date(1000), tags: ['nix2oci/members:test'] });
  const layout = join(dir, 'layout');
  const archive = join(dir, 'image.tar');
  await writeImage(image, { format: 'oci-layout', output: layout });
  await writeImage(image, { format: 'oci-archive', output: archive });
  return { layout, archive, bigSha: createHash('sha256').update(BIG).digest('hex'), members: Math.ceil(blob.uncompressedSize / FRAME_SIZE) };
}

describe.runIf(tools('skopeo', 'umoci'))('an image with a many-member layer, read by skopeo and umoci', () => {
  it('skopeo copies it, checking digests, and umoci unpacks the files intact', async () => {
    const dir = freshDir();
    const { layout, bigSha, members } = await manyMemberImage(dir);
    expect(members).toBeGreaterThanOrEqual(4);
    // skopeo decompresses every layer on the way (checking digests), then umoci unpacks (checking diffIDs).
    execFileSync('skopeo', ['copy', '--quiet', '--dest-decompress', `oci:${layout}:nix2oci/members:test`, `oci:${join(dir, 'copy')}:t`], { stdio: 'pipe' });
    const bundle = join(dir, 'bundle');
    execFileSync('umoci', ['unpack', '--image', `${layout}:nix2oci/members:test`, bundle], { stdio: 'pipe' });
    expect(createHash('sha256').update(readFileSync(join(bundle, 'rootfs/data/big'))).digest('hex')).toBe(bigSha);
    expect(readFileSync(join(bundle, 'rootfs/bin/busybox')).equals(readFileSync('/bin/busybox'))).toBe(true);
  });
});

describe.runIf(tools('podman'))('an image with a many-member layer, run by podman', () => {
  it('loads and runs, and the container sees the file whole', async () => {
    const dir = freshDir();
    const { archive, bigSha } = await manyMemberImage(dir);
    const id = podmanLoad(archive);
    try {
      const out = podmanRun(id, ['sha256sum', '/data/big']);
      expect(out.split(/\s+/)[0]).toBe(bigSha);
      expect(podman(['image', 'inspect', '--format', '{{len .RootFS.Layers}}', id]).trim()).toBe('1');
    } finally {
      podmanRemove(id);
    }
  }, 180_000);
});
