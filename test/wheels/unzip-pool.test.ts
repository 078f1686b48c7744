import { describe, it, expect } from 'vitest';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { UnzipPool } from '../../src/wheels/unzip-pool.js';
import { HashPool } from '../../src/util/hash-pool.js';
import { Threads } from '../../src/util/threads.js';
import { readWheelInfo, type WheelInfo } from '../../src/wheels/wheel-info.js';
import { ZipReader } from '../../src/wheels/zip.js';
import type { EntryRequest } from '../../src/wheels/unzip-worker.js';
import { isUserError } from '../../src/util/errors.js';
import { makeWheel } from '../helpers/wheels.js';
import { useScratchDirs } from '../helpers/scratch.js';

const scratchDir = useScratchDirs();

/** Every file entry of the wheel as an unzip request, in the zip's order. */
async function requests(info: WheelInfo): Promise<{ requests: EntryRequest[]; expected: Buffer[] }> {
  const zip = await ZipReader.open(info.file);
  try {
    const byName = new Map(info.entries.map((e) => [e.name, e]));
    const files = zip.entries.filter((e) => !e.isDir);
    const expected: Buffer[] = [];
    for (const e of files) {
      const chunks: Buffer[] = [];
      for await (const chunk of zip.read(e)) chunks.push(Buffer.from(chunk));
      expected.push(Buffer.concat(chunks));
    }
    return {
      requests: files.map((e) => ({
        name: e.name,
        offset: e.offset,
        central: e.central,
        hash: byName.get(e.name)!.recordHash,
      })),
      expected,
    };
  } finally {
    await zip.close();
  }
}

async function collect(body: AsyncIterable<Buffer>): Promise<{ bytes: Buffer; chunks: number }> {
  const parts: Buffer[] = [];
  for await (const chunk of body) parts.push(Buffer.from(chunk));
  return { bytes: Buffer.concat(parts), chunks: parts.length };
}

/** Small files (batched), files of several MiB (streamed), stored and deflated, compressible and not. */
function mixedWheel(dir: string, corrupt?: { tamper?: string }): string {
  const files: Record<string, string | { random: number; seed?: number } | { content: { random: number; seed: number }; stored: boolean }> = {};
  for (let i = 0; i < 300; i++) files[`mix/small${String(i).padStart(3, '0')}.py`] = `x = ${i}\n`.repeat(1 + (i % 50));
  files['mix/big1.so'] = { random: 5 << 20, seed: 1 };
  files['mix/big2.bin'] = { content: { random: 3 << 20, seed: 2 }, stored: true };
  files['mix/text.txt'] = 'abc\n'.repeat(2 << 20);
  files['mix/zz.py'] = 'last = True\n';
  return makeWheel({ dir, name: 'mix', version: '1.0', files, corrupt });
}

describe('unzip pool', () => {
  it('gives every entry\'s bytes in the order asked, batched or streamed, with one thread or several', async () => {
    const info = await readWheelInfo(mixedWheel(scratchDir('nix2oci-unzip-')));
    const { requests: all, expected } = await requests(info);
    // Backwards, so streams and batches interleave differently from the zip's order.
    const order = all.map((_, i) => all.length - 1 - i);
    for (const threads of [1, 3]) {
      const pool = new UnzipPool(threads);
      const bodies = pool.bodies(info.file, order.map((i) => all[i]!));
      for (const i of order) {
        const { bytes, chunks } = await collect(bodies.next());
        expect(bytes.equals(expected[i]!), all[i]!.name).toBe(true);
        // A streamed entry comes in chunks of 1 MiB, never whole.
        if (expected[i]!.length > 1 << 20) expect(chunks).toBe(Math.ceil(expected[i]!.length / (1 << 20)));
      }
      bodies.close();
    }
  });

  it('gives a batched entry whole (one buffer, no generator) and a streamed one only through next', async () => {
    const info = await readWheelInfo(mixedWheel(scratchDir('nix2oci-unzip-')));
    const { requests: all, expected } = await requests(info);
    const pool = new UnzipPool(2);
    const bodies = pool.bodies(info.file, all);
    let whole = 0;
    for (const [i, request] of all.entries()) {
      const taken = bodies.whole();
      if (request.central.uncompressedSize > 1 << 20) {
        expect(taken, request.name).toBeNull();
        expect((await collect(bodies.next())).bytes.equals(expected[i]!), request.name).toBe(true);
        continue;
      }
      expect(taken, request.name).not.toBeNull();
      const { body, release } = await taken!;
      expect(body.equals(expected[i]!), request.name).toBe(true);
      release();
      whole++;
    }
    expect(whole).toBe(all.filter((r) => r.central.uncompressedSize <= 1 << 20).length);
    bodies.close();
  });

  it('reads several wheels at once on one thread without waiting on each other', async () => {
    const dir = scratchDir('nix2oci-unzip-');
    const info = await readWheelInfo(mixedWheel(dir));
    const { requests: all, expected } = await requests(info);
    const pool = new UnzipPool(1);
    const readers = [pool.bodies(info.file, all), pool.bodies(info.file, all), pool.bodies(info.file, all)];
    // Round robin over the readers, one entry each: every stream waits for its own consumer only.
    for (let i = 0; i < all.length; i++) {
      for (const reader of readers) expect((await collect(reader.next())).bytes.equals(expected[i]!)).toBe(true);
    }
  });

  it('stops a stream its consumer left early, and the pool goes on', async () => {
    const info = await readWheelInfo(mixedWheel(scratchDir('nix2oci-unzip-')));
    const { requests: all, expected } = await requests(info);
    const big = all.findIndex((r) => r.name === 'mix/big1.so');
    const pool = new UnzipPool(1);
    const first = pool.bodies(info.file, [all[big]!]);
    for await (const chunk of first.next()) {
      expect(chunk.length).toBe(1 << 20);
      break;
    }
    first.close();
    // The one thread is free again: another reader gets the whole entry.
    const again = await collect(pool.bodies(info.file, [all[big]!]).next());
    expect(again.bytes.equals(expected[big]!)).toBe(true);
  });

  it('fails an entry whose bytes RECORD does not list, in one line naming the wheel and entry, after its bytes', async () => {
    const dir = scratchDir('nix2oci-unzip-');
    const info = await readWheelInfo(mixedWheel(dir, { tamper: 'mix/big1.so' }));
    const { requests: all } = await requests(info);
    const big = all.find((r) => r.name === 'mix/big1.so')!;
    const seen: number[] = [];
    const error = await (async () => {
      for await (const chunk of new UnzipPool(2).bodies(info.file, [big]).next()) seen.push(chunk.length);
    })().catch((err: unknown) => err);
    expect(isUserError(error)).toBe(true);
    expect((error as Error).message).toMatch(/mix-1\.0-py3-none-any\.whl: entry mix\/big1\.so does not match RECORD: RECORD says sha256=.*, the entry has sha256=/);
    expect(seen.reduce((a, b) => a + b, 0)).toBe(5 << 20);
    // A small one fails before any of its bytes.
    const small = all.find((r) => r.name === 'mix/small000.py')!;
    const wrong: EntryRequest = { ...small, hash: { algorithm: 'sha256', hex: createHash('sha256').update('other').digest('hex') } };
    await expect(collect(new UnzipPool(1).bodies(info.file, [wrong]).next())).rejects.toThrow(/entry mix\/small000\.py does not match RECORD/);
    expect(readFileSync(info.file).length).toBe(info.fileSize);
  });
});

describe('the threads the pools share', () => {
  it('run the hash and unzip jobs of one build on the same threads, end when idle, and start again when needed', async () => {
    const info = await readWheelInfo(mixedWheel(scratchDir('nix2oci-threads-')));
    const { requests: all, expected } = await requests(info);
    const threads = new Threads(2);
    const hashes = new HashPool(2, threads);
    const unzip = new UnzipPool(2, threads);
    const whole = createHash('sha256').update(readFileSync(info.file)).digest('hex');
    const unzipAll = async () => {
      const bodies = unzip.bodies(info.file, all);
      for (const [i, request] of all.entries()) expect((await collect(bodies.next())).bytes.equals(expected[i]!), request.name).toBe(true);
      bodies.close();
    };
    const size = readFileSync(info.file).length;
    const [digests] = await Promise.all([Promise.all([0, 1].map(() => hashes.sha256([{ file: info.file, start: 0, length: size }]))), unzipAll()]);
    expect(digests.map((d) => d.digest)).toEqual([`sha256:${whole}`, `sha256:${whole}`]);
    expect(threads.running).toBe(2);

    hashes.close();
    threads.stopIdle();
    expect(threads.running).toBe(0);
    // Both pools start their threads again.
    await unzipAll();
    expect((await hashes.sha256([{ file: info.file, start: 0, length: size }])).digest).toBe(`sha256:${whole}`);
    expect(threads.running).toBeGreaterThan(0);
    threads.stopIdle();
  });

  it('fail the jobs of a thread that dies, and run the next ones on a new thread', async () => {
    const info = await readWheelInfo(mixedWheel(scratchDir('nix2oci-threads-')));
    const threads = new Threads(1);
    const hashes = new HashPool(1, threads);
    const size = readFileSync(info.file).length;
    const job = hashes.sha256(Array.from({ length: 200 }, () => ({ file: info.file, start: 0, length: size })));
    threads.thread(0).stop();
    await expect(job).rejects.toThrow(/thread stopped/);
    const whole = createHash('sha256').update(readFileSync(info.file)).digest('hex');
    expect((await hashes.sha256([{ file: info.file, start: 0, length: size }])).digest).toBe(`sha256:${whole}`);
    threads.stopIdle();
  });
});
