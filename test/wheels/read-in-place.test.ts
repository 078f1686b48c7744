import { describe, it, expect } from 'vitest';
import { openSync, writeSync, closeSync } from 'node:fs';
import { ZipReader } from '../../src/wheels/zip.js';
import { makeWheel } from '../helpers/wheels.js';
import { useScratchDirs } from '../helpers/scratch.js';

/**
 * ZipReader.readInPlace: the library check's second read of a large library, in two reused buffers
 * (each piece a view the next overwrites), and ZipReader.reopen, which reads entries known from an
 * earlier read without parsing the zip's directory again. Both must give read()'s bytes and errors.
 */

const scratchDir = useScratchDirs();
const TEXT = Array.from({ length: 120_000 }, (_, i) => `line ${i}: ${'text '.repeat(i % 30)}\n`).join('');

async function copies(pieces: AsyncIterable<Buffer>, stopAfter = Infinity): Promise<Buffer> {
  const kept: Buffer[] = [];
  let total = 0;
  for await (const piece of pieces) {
    kept.push(Buffer.from(piece));
    total += piece.length;
    if (total >= stopAfter) break;
  }
  return Buffer.concat(kept);
}

function wheel(): string {
  return makeWheel({
    dir: scratchDir('nix2oci-in-place-'),
    name: 'big',
    version: '1.0',
    files: {
      'big/text.txt': TEXT,
      'big/random.bin': { random: 3 << 20, seed: 5 },
      'big/stored.bin': { content: { random: (2 << 20) + 17, seed: 6 }, stored: true },
      'big/small.py': 'A = 1\n',
      'big/empty.txt': '',
    },
  });
}

describe('ZipReader.readInPlace', () => {
  it('gives read()’s bytes for deflated, stored, large, small and empty entries, in pieces of at most 1 MiB', async () => {
    const file = wheel();
    const zip = await ZipReader.open(file);
    try {
      const files = zip.entries.filter((e) => !e.isDir);
      expect(files.length).toBeGreaterThanOrEqual(6);
      for (const entry of files) {
        const expected = await copies(zip.read(entry));
        const pieces: number[] = [];
        const got: Buffer[] = [];
        for await (const piece of zip.readInPlace(entry)) {
          pieces.push(piece.length);
          got.push(Buffer.from(piece));
        }
        expect({ name: entry.name, same: Buffer.concat(got).equals(expected) }).toEqual({ name: entry.name, same: true });
        expect(pieces.every((n) => n > 0 && n <= 1 << 20)).toBe(true);
        if (entry.size > 2 << 20) expect(pieces.length).toBeGreaterThan(1);
      }
    } finally {
      await zip.close();
    }
  });

  it('can stop early, and reads other entries after; reopen reads known entries without the directory', async () => {
    const file = wheel();
    const zip = await ZipReader.open(file);
    const text = zip.entries.find((e) => e.name === 'big/text.txt')!;
    const random = zip.entries.find((e) => e.name === 'big/random.bin')!;
    await zip.close();
    const again = await ZipReader.reopen(file, [text, random]);
    try {
      expect(again.entries.map((e) => e.name)).toEqual(['big/text.txt', 'big/random.bin']);
      const head = await copies(again.readInPlace(text), 100_000);
      expect(head.equals(Buffer.from(TEXT).subarray(0, head.length))).toBe(true);
      expect((await copies(again.readInPlace(text))).toString()).toBe(TEXT);
      expect((await copies(again.readInPlace(random))).length).toBe(3 << 20);
    } finally {
      await again.close();
    }
  });

  it('fails as read() does, in one line naming the file, the entry and the byte', async () => {
    const file = wheel();
    const zip = await ZipReader.open(file);
    const text = zip.entries.find((e) => e.name === 'big/text.txt')!;
    await zip.close();
    // Damage the deflated data in the middle of the entry.
    const fd = openSync(file, 'r+');
    writeSync(fd, Buffer.alloc(64, 0xff), 0, 64, text.offset + 200);
    closeSync(fd);
    const damaged = await ZipReader.reopen(file, [text]);
    try {
      const failure = (reading: AsyncIterable<Buffer>) => copies(reading).then(() => 'no error', (err: Error) => err.message);
      const expected = await failure(damaged.read(text));
      expect(expected).toMatch(new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: entry big/text\\.txt \\(data at byte \\d+\\): `));
      expect(await failure(damaged.readInPlace(text))).toBe(expected);
    } finally {
      await damaged.close();
    }
  });
});
