import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { readdirSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import * as zlib from 'node:zlib';
import { localHeaderDisagreement, unzipWorkerMain, type EntryRequest, type UnzipMessage, type UnzipReply } from '../../src/wheels/unzip-worker.js';
import { rawZlib, type RawZlib } from '../../src/util/raw-zlib.js';
import { ZipReader } from '../../src/wheels/zip.js';
import { readWheelInfo } from '../../src/wheels/wheel-info.js';
import { makeWheel } from '../helpers/wheels.js';
import { useScratchDirs } from '../helpers/scratch.js';
import { compileWriter, runUnderEveryNode } from '../helpers/node-versions.js';

/**
 * The unzip threads inflate into memory they keep (rawZlib), through zlib's handle, which Node does
 * not document: it must give inflateRawSync's bytes and errors, exist under every supported Node line,
 * and the threads must give the same results where it does not exist.
 */

const scratchDir = useScratchDirs();
const PIP = readdirSync('/usr/share/python-wheels').filter((f) => /^pip-.*\.whl$/.test(f)).map((f) => join('/usr/share/python-wheels', f))[0]!;
const TEXT = Buffer.from(Array.from({ length: 60_000 }, (_, i) => `line ${i}: ${'abc'.repeat(i % 50)}\n`).join(''));

/** `compressed` inflated by `inflater` with `in`-byte reads into an `out`-byte buffer: the bytes, and how much input it read. */
function inflateInPieces(inflater: RawZlib, compressed: Buffer, inSize: number, outSize: number): { bytes: Buffer; read: number } {
  const out = Buffer.alloc(outSize);
  const parts: Buffer[] = [];
  let read = 0;
  let pending = compressed.subarray(0, 0);
  for (;;) {
    if (pending.length === 0 && read < compressed.length) {
      pending = compressed.subarray(read, Math.min(compressed.length, read + inSize));
      read += pending.length;
    }
    const last = read === compressed.length;
    const [consumed, written] = inflater.step(pending, out, last);
    pending = pending.subarray(consumed);
    parts.push(Buffer.from(out.subarray(0, written)));
    if (written < out.length && (last || pending.length > 0)) return { bytes: Buffer.concat(parts), read: read - pending.length };
  }
}

const failureOf = (run: () => unknown): string => {
  try {
    run();
  } catch (err) {
    return (err as Error).message;
  }
  return 'no error';
};

/** rawZlib's inflater. */
const rawInflater = (z: typeof zlib) => rawZlib(z, 'inflateRaw');

describe('rawZlib inflating', () => {
  it('inflates as inflateRawSync does, whatever the sizes of its input and output pieces', () => {
    const inflater = rawInflater(zlib)!;
    expect(inflater).not.toBeNull();
    const compressed = zlib.deflateRawSync(TEXT);
    for (const [inSize, outSize] of [[compressed.length, TEXT.length + 1], [1000, 4096], [1, 65536], [1 << 20, 1 << 20]] as const) {
      const { bytes, read } = inflateInPieces(inflater, compressed, inSize, outSize);
      expect(bytes.equals(TEXT)).toBe(true);
      expect(read).toBe(compressed.length);
      inflater.reset();
    }
    // What follows the end of the deflate stream is not read (zlib's streams ignore it too).
    const { bytes, read } = inflateInPieces(inflater, Buffer.concat([compressed, Buffer.from('trailing bytes')]), 1 << 20, 1 << 20);
    expect(bytes.equals(TEXT)).toBe(true);
    expect(read).toBe(compressed.length);
  });

  it('fails as inflateRawSync fails, and a new one works after a failure', () => {
    const compressed = zlib.deflateRawSync(TEXT);
    const damaged = Buffer.from(compressed);
    damaged.fill(0xff, 100, 140);
    const truncated = compressed.subarray(0, compressed.length >> 1);
    for (const bad of [damaged, truncated]) {
      const expected = failureOf(() => zlib.inflateRawSync(bad));
      expect(expected).toMatch(/^(invalid|unexpected end of file)/);
      expect(failureOf(() => inflateInPieces(rawInflater(zlib)!, bad, 4096, 4096))).toBe(expected);
    }
    expect(inflateInPieces(rawInflater(zlib)!, compressed, 4096, 4096).bytes.equals(TEXT)).toBe(true);
  });

  it('is null for a zlib without the handle, and the threads then use the allocating functions', () => {
    const handleless = { ...zlib, createInflateRaw: () => ({ on() {} }) } as unknown as typeof zlib;
    expect(rawInflater(handleless)).toBeNull();
  });
});

/** The unzip service run on this thread, inflating with `inflaterOf`. */
function service(inflaterOf: typeof rawZlib): MessagePort {
  const { port1, port2 } = new MessageChannel();
  const main = new Function('require', `return (${unzipWorkerMain.toString()});`)(createRequire(import.meta.url)) as typeof unzipWorkerMain;
  main(port2, localHeaderDisagreement, inflaterOf);
  return port1;
}

/** Every reply to `message` until its last (a stream's chunks are given back as they come). */
function ask(port: MessagePort, message: UnzipMessage): Promise<UnzipReply[]> {
  return new Promise((resolve) => {
    const replies: UnzipReply[] = [];
    const listener = (reply: UnzipReply) => {
      if (reply.id !== message.id) return;
      if (reply.type === 'chunk') {
        replies.push({ ...reply, buffer: reply.buffer.slice(0, reply.length) });
        port.postMessage({ type: 'credit', id: message.id, buffer: reply.buffer }, [reply.buffer]);
        return;
      }
      replies.push(reply.type === 'end' ? { ...reply, buffers: [] } : reply);
      if (reply.type !== 'progress') {
        port.off('message', listener);
        resolve(replies);
      }
    };
    port.on('message', listener);
    port.postMessage(message);
  });
}

/** A batch of every small entry and a stream of each large one, as the service answers them. */
async function unzipAll(port: MessagePort, file: string): Promise<unknown[]> {
  const info = await readWheelInfo(file);
  const zip = await ZipReader.open(file);
  const byName = new Map(zip.entries.map((e) => [e.name, e]));
  await zip.close();
  const requests: EntryRequest[] = info.entries
    .filter((e) => !e.isDir)
    .map((e) => ({ name: e.name, offset: byName.get(e.name)!.offset, central: byName.get(e.name)!.central, hash: e.recordHash }));
  const small = requests.filter((r) => r.central.uncompressedSize <= 1 << 20);
  const large = requests.filter((r) => r.central.uncompressedSize > 1 << 20);
  const answers: unknown[] = [await ask(port, { type: 'batch', id: 1, file, entries: small, capacity: 0, buffer: null })];
  for (const [i, entry] of large.entries()) answers.push(await ask(port, { type: 'stream', id: 2 + i, file, entry, chunkSize: 1 << 16, credits: 2, buffers: [] }));
  return answers.map((replies) => JSON.parse(JSON.stringify(replies, (_, v) => (v instanceof ArrayBuffer ? Buffer.from(v).toString('base64') : v))));
}

describe('the unzip service without a raw inflater', () => {
  it('gives the same bytes and the same errors', async () => {
    const dir = scratchDir('nix2oci-inflate-');
    const files = { 'big/text.txt': TEXT.toString(), 'big/random.bin': { random: 3 << 20, seed: 3 }, 'small/a.py': 'A = 1\n' };
    const wheels = [
      PIP,
      makeWheel({ dir, name: 'big', version: '1.0', files }),
      makeWheel({ dir: scratchDir('nix2oci-inflate-'), name: 'big', version: '1.0', files, corrupt: { tamper: 'big/text.txt' } }),
      makeWheel({ dir: scratchDir('nix2oci-inflate-'), name: 'big', version: '1.0', files, corrupt: { tamper: 'small/a.py' } }),
    ];
    const fast = service(rawZlib);
    const fallback = service(() => null);
    try {
      for (const wheel of wheels) {
        const answers = await unzipAll(fast, wheel);
        expect(answers.length).toBeGreaterThan(0);
        expect(await unzipAll(fallback, wheel)).toEqual(answers);
      }
      // The tampered wheels failed, each on its own entry.
      const failures = (await Promise.all(wheels.slice(2).map((w) => unzipAll(fast, w)))).flat(2).filter((r) => (r as UnzipReply).type === 'failed');
      expect(failures.map((f) => (f as { message: string }).message)).toEqual([
        expect.stringMatching(/big\/text\.txt does not match RECORD/),
        expect.stringMatching(/small\/a\.py does not match RECORD/),
      ]);
    } finally {
      fast.close();
      fallback.close();
    }
  });
});

describe('rawZlib inflating across Node releases', () => {
  let compiled: string;
  const script = `
import * as zlib from 'node:zlib';
import { rawZlib } from './util/raw-zlib.js';
const text = Buffer.from(Array.from({ length: 20000 }, (_, i) => 'line ' + i + '\\n').join(''));
const compressed = zlib.deflateRawSync(text);
const inflater = rawZlib(zlib, 'inflateRaw');
const out = Buffer.alloc(text.length + 1);
const result = { node: process.version, handle: inflater !== null };
if (inflater) {
  const [read, written] = inflater.step(compressed, out, true);
  result.same = read === compressed.length && out.subarray(0, written).equals(text);
  inflater.reset();
  const bad = Buffer.from(compressed);
  bad.fill(0xff, 10, 40);
  try { inflater.step(bad, out, true); result.error = null; } catch (err) { result.error = err.message; }
  try { zlib.inflateRawSync(bad); } catch (err) { result.expected = err.message; }
}
console.log(JSON.stringify(result));
`;

  beforeAll(() => {
    compiled = compileWriter(script, 'src/util/raw-zlib.ts');
  });

  afterAll(() => rmSync(compiled, { recursive: true, force: true }));

  it('has zlib’s handle and inflates with it under Node 20, 22, 24 and 26', () => {
    const results = runUnderEveryNode<{ node: string; handle: boolean; same?: boolean; error?: string | null; expected?: string }>(compiled);
    expect(new Set(results.map((r) => r.node.split('.')[0])).size).toBe(4);
    for (const r of results) {
      expect({ node: r.node, handle: r.handle, same: r.same }).toEqual({ node: r.node, handle: true, same: true });
      expect(r.error).toBe(r.expected);
      expect(r.error).toBeTruthy();
    }
  });
});
