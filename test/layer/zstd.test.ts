import { describe, it, expect } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, mkdtempSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decompress } from 'fzstd';
import { noise, writeLayer } from '../helpers/layers.js';
import { tools } from '../helpers/tools.js';
import { storedZstdFrame } from '../../src/layer/zstd.js';
import { FRAME_SIZE } from '../../src/layer/format.js';
import type { LayerSource } from '../../src/layer/types.js';
import { tarToBuffer } from '../tar/tar-tools.js';
import { scanLayer } from '../../src/layer/scan.js';
import { measureLayer } from '../../src/layer/diff-id.js';

const sha256 = (bytes: Buffer) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
const freshDir = () => mkdtempSync(join(tmpdir(), 'nix2oci-zstd-'));

/** About 9 MB of tar: three frames, some compressible, some not. */
function source(): LayerSource {
  return async (sink) => {
    await sink.add({ type: 'directory', name: 'data', mode: 0o555 });
    await sink.add({ type: 'file', name: 'data/noise', mode: 0o444, size: 3_000_000, body: noise(3_000_000, 7) });
    const text = Buffer.from('/nix/store/abc-python3/lib/module.py\n'.repeat(160_000));
    await sink.add({ type: 'file', name: 'data/text', mode: 0o444, size: text.length, body: text });
  };
}

/** The one pinned zstd build, called directly: what every frame of a layer must be. */
async function referenceCompress(): Promise<(bytes: Uint8Array, level: number) => Uint8Array> {
  const zstd = createRequire(import.meta.url)('@bokuweb/zstd-wasm') as { init(): Promise<void>; compress(b: Uint8Array, level: number): Uint8Array };
  await zstd.init();
  return zstd.compress;
}

describe('zstd layers', () => {
  it('are one ZSTD_compress frame per FRAME_SIZE of tar: content size in each header, no checksum, no dictionary', async () => {
    const blob = await writeLayer(source(), { compression: 'zstd', dir: freshDir(), mtime: 1 });
    const bytes = readFileSync(blob.file);
    const tar = await tarToBuffer(source(), 1);
    expect(blob.diffId).toBe(sha256(tar));
    expect(blob.digest).toBe(sha256(bytes));
    expect(Buffer.from(decompress(bytes)).equals(tar)).toBe(true);
    const compress = await referenceCompress();
    const frames: Buffer[] = [];
    for (let at = 0; at < tar.length; at += FRAME_SIZE) frames.push(Buffer.from(compress(tar.subarray(at, at + FRAME_SIZE), 3)));
    expect(frames.length).toBe(3);
    expect(bytes.equals(Buffer.concat(frames))).toBe(true);
    // Frame header descriptor: Frame_Content_Size present, no Content_Checksum, no Dictionary_ID.
    const descriptor = bytes[4]!;
    expect(descriptor & 0b0000_0111).toBe(0);
    expect(descriptor >> 6 !== 0 || (descriptor & 0b0010_0000) !== 0).toBe(true);
  });

  it('depend on the level and on nothing else: not the number of turns, not the run', async () => {
    const one = await writeLayer(source(), { compression: 'zstd', dir: freshDir(), mtime: 1, jobs: 1 });
    const four = await writeLayer(source(), { compression: 'zstd', dir: freshDir(), mtime: 1, jobs: 4 });
    expect(four.digest).toBe(one.digest);
    const level19 = await writeLayer(source(), { compression: 'zstd', dir: freshDir(), mtime: 1, zstdLevel: 19 });
    expect(level19.digest).not.toBe(one.digest);
    expect(level19.diffId).toBe(one.diffId);
    expect(level19.size).toBeLessThan(one.size);
  });

  it('are read back by scanLayer (inspect) and measureLayer (the cache), diffID and size', async () => {
    const blob = await writeLayer(source(), { compression: 'zstd', dir: freshDir(), mtime: 1 });
    const scan = await scanLayer(createReadStream(blob.file), 'the layer');
    // The cache's check of an entry measures the blob the same way.
    expect(await measureLayer([{ file: blob.file, start: 0, length: blob.size }], 'zstd')).toEqual({ digest: blob.digest, diffId: blob.diffId, uncompressedSize: blob.uncompressedSize });
    expect(scan).toEqual({ storePaths: [], topLevel: ['data'], uncompressedSize: blob.uncompressedSize, diffId: blob.diffId });
    const damaged = readFileSync(blob.file);
    damaged[damaged.length >> 1] ^= 0xff;
    const file = join(freshDir(), 'damaged');
    execFileSync('sh', ['-c', `cat > ${file}`], { input: damaged });
    const result = await scanLayer(createReadStream(file), 'the layer').catch((err: Error) => err);
    // A damaged frame is either refused by the decompressor or gives another tar: never the same diffID.
    if (!(result instanceof Error)) expect(result.diffId).not.toBe(blob.diffId);
    else expect(result.message).toMatch(/^the layer is not a readable layer: /);
  });

  it('store small fixed buffers as raw or RLE blocks that every zstd reads back', () => {
    const inputs = [Buffer.alloc(0), Buffer.alloc(1024), Buffer.from('nix/store/'), noise(300_000, 3), Buffer.concat([Buffer.alloc(200_000, 7), noise(1000, 9)])];
    for (const input of inputs) {
      const frame = storedZstdFrame(input);
      expect(Buffer.from(decompress(frame)).equals(input)).toBe(true);
    }
    // The end-of-archive blocks: one RLE block, 13 bytes.
    expect(storedZstdFrame(Buffer.alloc(1024)).length).toBe(13);
  });

  it.runIf(tools('zstd'))('pass zstd -t, and zstd -d gives back the tar, stored frames included', async () => {
    const dir = freshDir();
    const blob = await writeLayer(source(), { compression: 'zstd', dir, mtime: 1 });
    const stored = join(dir, 'stored.zst');
    const input = Buffer.concat([noise(300_000, 3), Buffer.alloc(1024)]);
    const composed = Buffer.concat([storedZstdFrame(input.subarray(0, 1000)), readFileSync(blob.file), storedZstdFrame(input.subarray(1000))]);
    execFileSync('sh', ['-c', `cat > ${stored}`], { input: composed });
    for (const file of [blob.file, stored]) execFileSync('zstd', ['-q', '-t', file]);
    const tar = execFileSync('zstd', ['-q', '-d', '-c', blob.file], { maxBuffer: 1 << 26 });
    expect(sha256(tar)).toBe(blob.diffId);
    const all = execFileSync('zstd', ['-q', '-d', '-c', stored], { maxBuffer: 1 << 26 });
    expect(all.equals(Buffer.concat([input.subarray(0, 1000), tar, input.subarray(1000)]))).toBe(true);
  });
});
