import { describe, it, expect } from 'vitest';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { noise, writeLayer } from '../helpers/layers.js';
import type { LayerSource } from '../../src/layer/types.js';
import { UserError } from '../../src/util/errors.js';
import { tarToBuffer, tarStreamList } from '../tar/tar-tools.js';

function sha256(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

function freshDir(): string {
  return mkdtempSync(join(tmpdir(), 'nix2oci-layer-'));
}

/** A layer of a few MB: several files, some compressible, crossing many 1 MiB chunks. */
function sampleSource(): LayerSource {
  return async (sink) => {
    await sink.add({ type: 'directory', name: 'nix', mode: 0o555 });
    await sink.add({ type: 'directory', name: 'nix/store', mode: 0o555 });
    await sink.add({ type: 'directory', name: 'nix/store/abc-sample', mode: 0o555 });
    for (let i = 0; i < 5; i++) {
      const data = i % 2 === 0 ? noise(700_000 + i, i + 1) : Buffer.from('text line\n'.repeat(90_000 + i));
      await sink.add({ type: 'file', name: `nix/store/abc-sample/f${i}`, mode: 0o444, size: data.length, body: data });
    }
    await sink.add({ type: 'symlink', name: 'nix/store/abc-sample/link', target: 'f0' });
  };
}

describe('writeLayer', () => {
  it('without compression writes the tar itself, named by its sha256, which is both digest and diffID', async () => {
    const dir = freshDir();
    const blob = await writeLayer(sampleSource(), { compression: 'none', dir, mtime: 1 });
    const bytes = readFileSync(blob.file);
    expect(bytes.equals(await tarToBuffer(sampleSource(), 1))).toBe(true);
    expect(blob.digest).toBe(sha256(bytes));
    expect(blob.diffId).toBe(blob.digest);
    expect(blob.size).toBe(bytes.length);
    expect(blob.uncompressedSize).toBe(bytes.length);
    expect(blob.compression).toBe('none');
    expect(dirname(blob.file)).toBe(dir);
    expect(basename(blob.file)).toBe(blob.digest.slice('sha256:'.length));
    expect(readdirSync(dir)).toEqual([basename(blob.file)]);
  });

  it('with gzip writes a blob that decompresses to the diffID’d tar, with a fixed gzip header', async () => {
    const dir = freshDir();
    const blob = await writeLayer(sampleSource(), { compression: 'gzip', dir, mtime: 1 });
    const bytes = readFileSync(blob.file);
    const tar = gunzipSync(bytes);
    expect(tar.equals(await tarToBuffer(sampleSource(), 1))).toBe(true);
    expect(blob.diffId).toBe(sha256(tar));
    expect(blob.uncompressedSize).toBe(tar.length);
    expect(blob.digest).toBe(sha256(bytes));
    expect(blob.size).toBe(bytes.length);
    expect(blob.size).toBeLessThan(tar.length);
    expect(basename(blob.file)).toBe(blob.digest.slice('sha256:'.length));
    // Magic, deflate, no flags, mtime 0, XFL 0, OS 3 (Unix): the same on every platform.
    expect(bytes.subarray(0, 10).toString('hex')).toBe('1f8b0800000000000003');
    // On Linux at level 6 that is exactly what zlib's own gzip writes: the deflate stream is zlib's.
    expect(bytes.equals(gzipSync(tar, { level: 6 }))).toBe(true);
    expect(readdirSync(dir)).toEqual([basename(blob.file)]);
  });

  it('keeps the header fixed at other levels too (zlib would vary XFL with the level)', async () => {
    for (const gzipLevel of [1, 9]) {
      const blob = await writeLayer(sampleSource(), { compression: 'gzip', dir: freshDir(), mtime: 1, gzipLevel });
      const bytes = readFileSync(blob.file);
      expect(bytes.subarray(0, 10).toString('hex')).toBe('1f8b0800000000000003');
      const zlibOwn = gzipSync(gunzipSync(bytes), { level: gzipLevel });
      expect(bytes.subarray(10).equals(zlibOwn.subarray(10))).toBe(true);
    }
  });

  it('gives the same bytes on every run, and different ones for a different mtime', async () => {
    const a = await writeLayer(sampleSource(), { compression: 'gzip', dir: freshDir(), mtime: 1 });
    const b = await writeLayer(sampleSource(), { compression: 'gzip', dir: freshDir(), mtime: 1 });
    expect(b.digest).toBe(a.digest);
    expect(readFileSync(b.file).equals(readFileSync(a.file))).toBe(true);
    const c = await writeLayer(sampleSource(), { compression: 'gzip', dir: freshDir(), mtime: 1_700_000_000 });
    expect(c.diffId).not.toBe(a.diffId);
    const entries = await tarStreamList(gunzipSync(readFileSync(c.file)));
    expect(new Set(entries.map((e) => e.mtime))).toEqual(new Set([1_700_000_000]));
  });

  it('writes several layers at once on the worker pool, each right', async () => {
    const dir = freshDir();
    const sources: LayerSource[] = [0, 1, 2, 3].map((n) => async (sink) => {
      const data = noise(1_500_000 + n, n + 7);
      await sink.add({ type: 'file', name: `file-${n}`, mode: 0o444, size: data.length, body: data });
    });
    const blobs = await Promise.all(sources.map((s, i) => writeLayer(s, { compression: i % 2 ? 'gzip' : 'none', dir, mtime: 1 })));
    for (const [i, blob] of blobs.entries()) {
      const tar = await tarToBuffer(sources[i]!, 1);
      expect(blob.diffId).toBe(sha256(tar));
      const bytes = readFileSync(blob.file);
      expect((i % 2 ? gunzipSync(bytes) : bytes).equals(tar)).toBe(true);
    }
    expect(readdirSync(dir).sort()).toEqual(blobs.map((b) => basename(b.file)).sort());
  });

  it('passes a source’s error through and leaves no temp file behind', async () => {
    for (const compression of ['gzip', 'none'] as const) {
      const dir = freshDir();
      const failing: LayerSource = async (sink) => {
        const data = noise(3_000_000, 3);
        await sink.add({ type: 'file', name: 'ok', mode: 0o444, size: data.length, body: data });
        throw new UserError('bad NAR in demo.closure at byte 1234');
      };
      await expect(writeLayer(failing, { compression, dir, mtime: 1 })).rejects.toThrow('bad NAR in demo.closure at byte 1234');
      expect(readdirSync(dir)).toEqual([]);
      // The worker is fine afterwards.
      const blob = await writeLayer(sampleSource(), { compression, dir, mtime: 1 });
      expect(readdirSync(dir)).toEqual([basename(blob.file)]);
    }
  });

  it('reports an unwritable directory as a UserError naming it', async () => {
    const dir = join(freshDir(), 'missing');
    await expect(writeLayer(sampleSource(), { compression: 'gzip', dir, mtime: 1 })).rejects.toThrow(UserError);
    await expect(writeLayer(sampleSource(), { compression: 'none', dir, mtime: 1 })).rejects.toThrow(`cannot write a layer in ${dir}`);
  });

  it('refuses a bad gzip level or compression', async () => {
    const dir = freshDir();
    await expect(writeLayer(sampleSource(), { compression: 'gzip', dir, mtime: 1, gzipLevel: 0 })).rejects.toThrow(UserError);
    await expect(writeLayer(sampleSource(), { compression: 'brotli' as 'gzip', dir, mtime: 1 })).rejects.toThrow(/unknown compression "brotli"/);
    await expect(writeLayer(sampleSource(), { compression: 'zstd', dir, mtime: 1, zstdLevel: 20 })).rejects.toThrow(/zstd level must be 1 to 19, got 20/);
  });
});
