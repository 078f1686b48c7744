import { describe, it, expect } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { codecOf, Turns } from '../../src/layer/codec.js';
import { FRAME_SIZE, type LayerFormat } from '../../src/layer/format.js';
import { writeComposedLayer, writeLayer as writeLayerTo } from '../../src/layer/writer.js';
import type { LayerSource } from '../../src/layer/types.js';
import { UserError } from '../../src/util/errors.js';
import { noise, writeLayer } from '../helpers/layers.js';
import { tarToBuffer } from '../tar/tar-tools.js';

const GZIP: LayerFormat = { compression: 'gzip', gzipLevel: 1, mtime: 1 };

function fileSource(name: string, bytes: Buffer): LayerSource {
  return async (sink) => {
    await sink.add({ type: 'file', name, mode: 0o444, size: bytes.length, body: bytes });
  };
}

/** A file's tar segment (without the end-of-archive blocks). */
async function segmentTar(name: string, text: string): Promise<Buffer> {
  const whole = await tarToBuffer(fileSource(name, Buffer.from(text)), 1, 1 << 20);
  return whole.subarray(0, whole.length - 1024);
}

function scratch(): string {
  return mkdtempSync(join(tmpdir(), 'nix2oci-writer-'));
}

describe('the layer writer', () => {
  it('compresses every FRAME_SIZE of tar into a gzip member of its own: the blob is the frames of the tar, in order', async () => {
    const text = Buffer.from(Array.from({ length: 700_000 }, (_, i) => `line ${(i * 7919) % 100_003} of the store\n`).join(''));
    const source = fileSource('big', text);
    const tar = await tarToBuffer(source, 1, 1 << 20);
    expect(tar.length).toBeGreaterThan(2 * FRAME_SIZE);
    const dir = scratch();
    try {
      const blob = await writeLayer(source, { compression: 'gzip', dir, mtime: 1, gzipLevel: 1 });
      const codec = codecOf(GZIP)!;
      const frames: Buffer[] = [];
      for (let at = 0; at < tar.length; at += FRAME_SIZE) frames.push(codec.frameSync(tar.subarray(at, at + FRAME_SIZE)));
      expect(readFileSync(blob.file).equals(Buffer.concat(frames))).toBe(true);
      expect(gunzipSync(readFileSync(blob.file)).equals(tar)).toBe(true);
      expect(blob.diffId).not.toBe(blob.digest);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('shares one set of turns across layers: with one turn, two layers at once still finish, with the bytes each has alone', async () => {
    const data = Buffer.from('abc'.repeat(3 * FRAME_SIZE));
    const dir = scratch();
    try {
      const alone = await writeLayer(fileSource('f', data), { compression: 'gzip', dir, mtime: 1 });
      rmSync(alone.file);
      const [one, two] = await Promise.all([
        writeLayer(fileSource('f', data), { compression: 'gzip', dir, mtime: 1, jobs: 1 }),
        writeLayer(fileSource('g', data), { compression: 'gzip', dir, mtime: 1, jobs: 1 }),
      ]);
      expect(one.digest).toBe(alone.digest);
      expect(gunzipSync(readFileSync(two.file)).length).toBe(two.uncompressedSize);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('keeps the frames in tar order however late the compressing turns come', async () => {
    // Turns granted after random delays, so parts wait for theirs in every order: the tar writer hands
    // its next chunks over meanwhile, and a part numbered when its turn came (not when it was cut)
    // could land after a later one.
    class LateTurns extends Turns {
      override take(): Promise<void> | undefined {
        const turn = super.take() ?? Promise.resolve();
        return turn.then(() => new Promise<void>((resolve) => setTimeout(resolve, Math.floor(Math.random() * 8))));
      }
    }
    const data = noise(10 * FRAME_SIZE + 12345, 7);
    const source = fileSource('big', data);
    const tar = await tarToBuffer(source, 1, 1 << 20);
    const dir = scratch();
    try {
      for (let round = 0; round < 5; round++) {
        const handle = await open(join(dir, `blob-${round}`), 'w');
        const written = await writeLayerTo(source, GZIP, { handle, at: 0, path: 'blob' }, { turns: new LateTurns(2) });
        await handle.close();
        expect(gunzipSync(readFileSync(join(dir, `blob-${round}`))).equals(tar)).toBe(true);
        expect(written.tarSize).toBe(tar.length);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('writes a composed layer as head, segments and end, each segment framed alone, in one pass', async () => {
    const codec = codecOf(GZIP)!;
    const head = { tar: Buffer.alloc(512, 1), stored: codec.frameSync(Buffer.alloc(512, 1)) };
    const end = { tar: Buffer.alloc(1024), stored: codec.frameSync(Buffer.alloc(1024)) };
    const dir = scratch();
    try {
      const handle = await open(join(dir, 'blob'), 'w');
      const written = await writeComposedLayer(head, [fileSource('a', Buffer.from('one')), fileSource('b', Buffer.from('two'))], end, GZIP, { handle, at: 0, path: 'blob' });
      await handle.close();
      const bytes = readFileSync(join(dir, 'blob'));
      expect(bytes.length).toBe(written.size);
      const segments = [await segmentTar('a', 'one'), await segmentTar('b', 'two')];
      expect(bytes.equals(Buffer.concat([head.stored, ...segments.map((s) => codec.frameSync(s)), end.stored]))).toBe(true);
      expect(gunzipSync(bytes).length).toBe(written.tarSize);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('an empty layer is a valid gzip of the end-of-archive blocks', async () => {
    const dir = scratch();
    try {
      const blob = await writeLayer(async () => {}, { compression: 'gzip', dir, mtime: 1 });
      expect(gunzipSync(readFileSync(blob.file)).equals(Buffer.alloc(1024))).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('an uncompressed layer is its tar, hashed once: its digest is its diffID', async () => {
    const dir = scratch();
    try {
      const source = fileSource('x', Buffer.from('x'.repeat(5000)));
      const blob = await writeLayer(source, { compression: 'none', dir, mtime: 1 });
      expect(readFileSync(blob.file).equals(await tarToBuffer(source, 1, 1 << 20))).toBe(true);
      expect(blob.diffId).toBe(blob.digest);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('fails with one line when its output cannot be written, instead of going on', async () => {
    const dir = scratch();
    try {
      const handle = await open(join(dir, 'blob'), 'w');
      await handle.close();
      const readOnly = await open(join(dir, 'blob'), 'r');
      const big = Buffer.alloc(3 * FRAME_SIZE, 7);
      await expect(writeLayerTo(fileSource('big', big), GZIP, { handle: readOnly, at: 0, path: join(dir, 'blob') }, { turns: new Turns(2) })).rejects.toThrow(UserError);
      await readOnly.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
