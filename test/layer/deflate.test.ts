import { describe, it, expect, afterAll } from 'vitest';
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import * as zlib from 'node:zlib';
import { rawZlib } from '../../src/util/raw-zlib.js';
import { Threads } from '../../src/util/threads.js';
import { deflateWorkerMain } from '../../src/layer/deflate-worker.js';
import type { FrameMessage, FrameReply } from '../../src/layer/frame-pool.js';
import { codecOf, gzipFramePool } from '../../src/layer/codec.js';
import { deflateOptions, FRAME_SIZE, GZIP_MEMBER_HEADER } from '../../src/layer/format.js';

/**
 * gzip members are made on the worker threads, by a deflater driven through zlib's undocumented handle
 * into memory that goes round (rawZlib, the gzip frame pool). Their bytes are the contract: each must be the
 * member `frameSync` makes with zlib's documented deflateRawSync, at every level, whatever the sizes
 * of the pieces, with or without the handle. (gzip-node-versions.test.ts runs them under every Node.)
 */

/** Mixed data: text, runs, and bytes that do not compress. */
function mixed(size: number, seed: number): Buffer {
  const bytes = Buffer.alloc(size);
  let x = seed >>> 0 || 1;
  for (let at = 0; at < size; ) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const kind = (x >>> 0) % 3;
    const n = Math.min(size - at, 1000 + ((x >>> 8) % 30000));
    if (kind === 0) bytes.write(`line ${x >>> 0} of ${'text '.repeat(n % 40)}\n`.repeat(Math.ceil(n / 60)).slice(0, n), at, 'latin1');
    else if (kind === 1) bytes.fill(x & 0xff, at, at + n);
    else for (let i = 0; i < n; i++) bytes[at + i] = (Math.imul(x, i + 1) >>> 13) & 0xff;
    at += n;
  }
  return bytes;
}

const INPUTS: [string, Buffer][] = [
  ['empty', Buffer.alloc(0)],
  ['one byte', Buffer.from('x')],
  ['text', Buffer.from(Array.from({ length: 30_000 }, (_, i) => `line ${i}: ${'abc'.repeat(i % 50)}\n`).join(''))],
  ['a full part of mixed data', mixed(FRAME_SIZE, 7)],
  // sha256 in counter mode: deflate stores these, and the member is larger than the part.
  ['bytes that do not compress', Buffer.concat(Array.from({ length: 1 << 15 }, (_, i) => createHash('sha256').update(String(i)).digest()))],
];

describe('rawZlib deflating', () => {
  it('gives deflateRawSync’s bytes whatever the size of its output pieces, and again after a reset', () => {
    for (const level of [1, 6, 9]) {
      const { chunkSize: _, ...options } = deflateOptions(level);
      const deflater = rawZlib(zlib, 'deflateRaw', options)!;
      expect(deflater).not.toBeNull();
      for (const [name, input] of INPUTS) {
        const expected = zlib.deflateRawSync(input, options);
        for (const outSize of [64, 4096, 256 << 10, expected.length + 64]) {
          const out = Buffer.alloc(outSize);
          const pieces: Buffer[] = [];
          let rest: Uint8Array = input;
          for (;;) {
            const [read, written] = deflater.step(rest, out, true);
            rest = rest.subarray(read);
            pieces.push(Buffer.from(out.subarray(0, written)));
            if (written < out.length) break;
          }
          deflater.reset();
          expect({ level, name, outSize, same: Buffer.concat(pieces).equals(expected) }).toEqual({ level, name, outSize, same: true });
        }
      }
    }
  });
});

/** The deflate service run on this thread with `deflaterOf`: each member it makes, whole. */
function service(deflaterOf: typeof rawZlib) {
  const { port1, port2 } = new MessageChannel();
  const main = new Function('require', `return (${deflateWorkerMain.toString()});`)(createRequire(import.meta.url)) as typeof deflateWorkerMain;
  main(port2, deflaterOf, [...GZIP_MEMBER_HEADER], 1000);
  let id = 0;
  return {
    port: port1 as MessagePort,
    member(input: Buffer, level: number): Promise<Buffer> {
      const part = new Uint8Array(input).buffer;
      const { chunkSize: _, ...options } = deflateOptions(level);
      const message: FrameMessage<typeof options> = { id: ++id, part, length: input.length, settings: options, spares: [] };
      return new Promise((resolve, reject) => {
        port1.once('message', (reply: FrameReply) => {
          if ('error' in reply) return reject(new Error(reply.error));
          expect(reply.lengths.every((n, i) => n > 0 && n <= reply.pieces[i]!.byteLength)).toBe(true);
          expect(Buffer.from(reply.part).subarray(0, input.length).equals(input)).toBe(true);
          resolve(Buffer.concat(reply.pieces.map((p, i) => Buffer.from(p, 0, reply.lengths[i]))));
        });
        port1.postMessage(message, [part]);
      });
    },
  };
}

describe('the deflate service', () => {
  it('makes frameSync’s member, in pieces, with the handle and without it', async () => {
    const fast = service(rawZlib);
    const fallback = service(() => null);
    try {
      for (const level of [1, 6]) {
        const codec = codecOf({ compression: 'gzip', gzipLevel: level, mtime: 0 })!;
        for (const [name, input] of INPUTS) {
          const expected = codec.frameSync(input);
          expect({ name, level, same: (await fast.member(input, level)).equals(expected) }).toEqual({ name, level, same: true });
          expect({ name, level, same: (await fallback.member(input, level)).equals(expected) }).toEqual({ name, level, same: true });
        }
      }
      // A member is valid gzip on its own.
      expect(zlib.gunzipSync(await fast.member(INPUTS[2]![1], 6)).equals(INPUTS[2]![1])).toBe(true);
    } finally {
      fast.port.close();
      fallback.port.close();
    }
  });
});

describe('the gzip frame pool', () => {
  const threads = new Threads(2);
  afterAll(() => {
    for (let i = 0; i < 2; i++) threads.thread(i).stop();
  });

  it('makes frameSync’s members on the threads, many at once, and gives each part’s memory back', async () => {
    const pool = gzipFramePool(2, threads);
    const { chunkSize: _, ...options } = deflateOptions(6);
    const codec = codecOf({ compression: 'gzip', gzipLevel: 6, mtime: 0 })!;
    for (let round = 0; round < 3; round++) {
      const parts = INPUTS.map(([, input]) => {
        const part = Buffer.allocUnsafeSlow(FRAME_SIZE);
        input.copy(part);
        return { part, length: input.length };
      });
      const frames = await Promise.all(parts.map(({ part, length }) => pool.frame(part, length, options)));
      for (const [i, frame] of frames.entries()) {
        const input = INPUTS[i]![1];
        expect(Buffer.concat(frame.bytes).equals(codec.frameSync(input))).toBe(true);
        // The part moved to a thread and came back, its bytes untouched.
        expect(parts[i]!.part.length).toBe(0);
        expect(frame.part!.length).toBe(FRAME_SIZE);
        expect(frame.part!.subarray(0, input.length).equals(input)).toBe(true);
        frame.release();
      }
    }
  });

  it('copies a part that shares its memory, and leaves it as it was', async () => {
    const pool = gzipFramePool(1, threads);
    const whole = mixed(3 << 20, 11);
    const view = whole.subarray(1 << 20);
    const frame = await pool.frame(view, 1 << 20, deflateOptions(6));
    expect(frame.part).toBe(view);
    expect(view.length).toBe(2 << 20);
    expect(zlib.gunzipSync(Buffer.concat(frame.bytes)).equals(whole.subarray(1 << 20, 2 << 20))).toBe(true);
  });

  it('fails the members in flight when their thread stops', async () => {
    const own = new Threads(1);
    const pool = gzipFramePool(1, own);
    const { chunkSize: _, ...options } = deflateOptions(9);
    const members = Array.from({ length: 4 }, () => pool.frame(mixed(FRAME_SIZE, 5), FRAME_SIZE, options));
    own.thread(0).stop();
    const settled = await Promise.allSettled(members);
    expect(settled.some((s) => s.status === 'rejected')).toBe(true);
    for (const s of settled) if (s.status === 'rejected') expect((s.reason as Error).message).toMatch(/^gzip: /);
    // A new thread serves the next member.
    const after = await pool.frame(Buffer.from('again'), 5, options);
    expect(zlib.gunzipSync(Buffer.concat(after.bytes)).toString()).toBe('again');
    own.thread(0).stop();
  });
});
