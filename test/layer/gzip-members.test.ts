import { describe, it, expect } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { GzipMembers } from '../../src/layer/gzip.js';
import { PART_SIZE } from '../../src/layer/worker.js';
import { writeLayer } from '../../src/layer/write.js';
import { layerJobs, setLayerJobs } from '../../src/layer/jobs.js';
import type { LayerSource } from '../../src/layer/types.js';
import { tarToBuffer } from '../tar/tar-tools.js';

async function compress(pieces: Buffer[], level = 6): Promise<Buffer> {
  const members: Buffer[] = [];
  const gz = new GzipMembers(level, (m) => members.push(m));
  for (const piece of pieces) await gz.write(piece);
  await gz.end();
  return Buffer.concat(members);
}

/** Cuts bytes into pieces of awkward, varying sizes. */
function pieces(bytes: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let offset = 0, i = 0; offset < bytes.length; i++) {
    const size = [1, 511, 70_000, 3 << 20, 9 << 20][i % 5]!;
    out.push(bytes.subarray(offset, offset + size));
    offset += size;
  }
  return out;
}

describe('GzipMembers', () => {
  it('gives exactly the bytes of a writeLayer blob for the same tar, however the input is cut', async () => {
    const text = Buffer.from(Array.from({ length: 700_000 }, (_, i) => `line ${(i * 7919) % 100_003} of the store\n`).join(''));
    const source: LayerSource = async (sink) => {
      await sink.add({ type: 'file', name: 'big', mode: 0o444, size: text.length, body: text });
    };
    const tar = await tarToBuffer(source, 1, 1 << 20);
    expect(tar.length).toBeGreaterThan(2 * PART_SIZE);
    const dir = mkdtempSync(join(tmpdir(), 'nix2oci-members-'));
    try {
      const blob = await writeLayer(source, { compression: 'gzip', dir, mtime: 1, gzipLevel: 1 });
      const bytes = await compress(pieces(tar), 1);
      expect(bytes.equals(readFileSync(blob.file))).toBe(true);
      expect(gunzipSync(bytes).equals(tar)).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('shares the jobs turns with the layer writer: with one job, both still finish, with the same bytes', async () => {
    const data = Buffer.from('abc'.repeat(3 * PART_SIZE));
    const source: LayerSource = async (sink) => {
      await sink.add({ type: 'file', name: 'f', mode: 0o444, size: data.length, body: data });
    };
    const dir = mkdtempSync(join(tmpdir(), 'nix2oci-members-'));
    const saved = layerJobs();
    try {
      const alone = await compress([data]);
      setLayerJobs(1);
      const [together, blob] = await Promise.all([compress(pieces(data)), writeLayer(source, { compression: 'gzip', dir, mtime: 1 })]);
      expect(together.equals(alone)).toBe(true);
      expect(gunzipSync(readFileSync(blob.file)).length).toBe(blob.uncompressedSize);
    } finally {
      setLayerJobs(saved);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('writes one empty member for no input, a valid gzip of nothing', async () => {
    const bytes = await compress([]);
    expect(gunzipSync(bytes).length).toBe(0);
  });

  it('rejects once emit throws (a full disk), instead of going on', async () => {
    const gz = new GzipMembers(6, () => {
      throw new Error('ENOSPC: no space left on device');
    });
    const big = Buffer.alloc(3 * PART_SIZE, 7);
    await expect(
      (async () => {
        await gz.write(big);
        await gz.write(big);
        await gz.end();
      })(),
    ).rejects.toThrow(/ENOSPC/);
  });
});
