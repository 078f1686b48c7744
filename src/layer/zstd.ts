import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { Transform } from 'node:stream';
import { Worker } from 'node:worker_threads';
import { Decompress } from 'fzstd';
import { threadPrologue } from '../util/young-generation.js';
import type { Codec } from './types.js';

/**
 * zstd frames, made by one pinned build of zstd compiled to WebAssembly (`@bokuweb/zstd-wasm`, exact
 * version in package.json): the same bytes on every machine and every Node release, which neither
 * Node's own zstd (Node ≥ 22.15 only, and whichever libzstd it bundles) nor a native addon can promise.
 * Each frame is one `ZSTD_compress` call: single-threaded, at a fixed level, the content size in the
 * frame header, no checksum, no dictionary. WebAssembly runs on the thread that calls it, so frames
 * compress on a pool of worker threads, one WebAssembly instance each; which worker compresses a frame
 * never changes its bytes, and frame boundaries depend on FRAME_SIZE only.
 */

/** The zstd codec at `level`: frames compressed on the worker pool, a layer's head and end stored. */
export function zstdCodec(level: number): Codec {
  return {
    frame: async (part, length) => ({ bytes: [await zstdPool().compress(part.subarray(0, length), level)], part, release: () => {} }),
    frameSync: storedZstdFrame,
  };
}

/**
 * A zstd frame that stores `bytes` as they are (raw blocks, or RLE blocks for a run of one byte), made
 * here on this thread: for the few small, fixed buffers a layer starts and ends with (the store-path head,
 * the end-of-archive blocks), which need no WebAssembly and never change with the zstd release.
 * Frame header: single segment, 4-byte content size (RFC 8878 §3.1.1.1).
 */
export function storedZstdFrame(bytes: Buffer): Buffer {
  if (bytes.length >= 2 ** 32) throw new Error('storedZstdFrame is for small buffers');
  const header = Buffer.alloc(9);
  header.writeUInt32LE(ZSTD_MAGIC, 0);
  header[4] = 0xa0; // Frame_Content_Size_flag 2 (4 bytes), Single_Segment_flag
  header.writeUInt32LE(bytes.length, 5);
  const parts: Buffer[] = [header];
  // A block holds at most 128 KiB (and no more than the window, which here is the content size).
  const BLOCK = 128 << 10;
  let offset = 0;
  do {
    const block = bytes.subarray(offset, offset + BLOCK);
    offset += block.length;
    const last = offset >= bytes.length ? 1 : 0;
    const rle = block.length > 1 && block.every((b) => b === block[0]);
    const blockHeader = Buffer.alloc(3);
    blockHeader.writeUIntLE(last | ((rle ? 1 : 0) << 1) | (block.length << 3), 0, 3);
    parts.push(blockHeader, rle ? block.subarray(0, 1) : block);
  } while (offset < bytes.length);
  return Buffer.concat(parts);
}

interface Job {
  id: number;
  resolve: (frame: Buffer) => void;
  reject: (err: Error) => void;
}

type Reply = { id: number; frame: Uint8Array } | { id: number; error: string };

/** The worker's program as source text: loads the WebAssembly once, then compresses what it is sent. */
function zstdWorkerMain(modulePath: string): void {
  const { parentPort } = require('node:worker_threads') as typeof import('node:worker_threads');
  const zstd = require(modulePath) as { init(): Promise<void>; compress(bytes: Uint8Array, level: number): Uint8Array };
  const ready = zstd.init();
  parentPort!.on('message', (job: { id: number; bytes: Uint8Array; level: number }) => {
    ready.then(
      () => {
        const frame = zstd.compress(job.bytes, job.level);
        parentPort!.postMessage({ id: job.id, frame }, [frame.buffer as ArrayBuffer]);
      },
      (err: unknown) => parentPort!.postMessage({ id: job.id, error: String(err) }),
    ).catch((err: unknown) => parentPort!.postMessage({ id: job.id, error: String(err) }));
  });
}

class ZstdWorker {
  readonly worker: Worker;
  readonly jobs = new Map<number, Job>();

  constructor(source: string, onDead: (w: ZstdWorker) => void) {
    this.worker = new Worker(`'use strict';\n${threadPrologue()}${source}`, { eval: true });
    this.worker.unref();
    this.worker.on('message', (reply: Reply) => {
      const job = this.jobs.get(reply.id);
      if (!job) return;
      this.jobs.delete(reply.id);
      if (this.jobs.size === 0) this.worker.unref();
      if ('error' in reply) job.reject(new Error(`zstd: ${reply.error}`));
      else job.resolve(Buffer.from(reply.frame.buffer, reply.frame.byteOffset, reply.frame.byteLength));
    });
    const die = (error: Error) => {
      onDead(this);
      for (const job of this.jobs.values()) job.reject(error);
      this.jobs.clear();
    };
    this.worker.on('error', die);
    this.worker.on('exit', (code) => die(new Error(`zstd worker exited with code ${code}`)));
  }
}

/**
 * The threads compressing zstd frames: one per CPU, started when first needed and unref'd while idle (an
 * idle pool never holds the process). How many frames are in flight is bounded by the caller's turns
 * (`--jobs`); a frame goes to the worker with the fewest.
 */
class ZstdPool {
  readonly #workers: ZstdWorker[] = [];
  readonly #source: string;
  #nextId = 0;

  constructor(readonly size: number) {
    const modulePath = createRequire(import.meta.url).resolve('@bokuweb/zstd-wasm');
    this.#source = `(${zstdWorkerMain.toString()})(${JSON.stringify(modulePath)});\n`;
  }

  compress(part: Buffer, level: number): Promise<Buffer> {
    // A copy of its own, transferred: the caller reuses its buffer as soon as this returns.
    const bytes = new Uint8Array(part);
    return new Promise((resolve, reject) => {
      const worker = this.#pick();
      const id = this.#nextId++;
      worker.jobs.set(id, { id, resolve, reject });
      worker.worker.ref();
      worker.worker.postMessage({ id, bytes, level }, [bytes.buffer]);
    });
  }

  #pick(): ZstdWorker {
    const idle = this.#workers.find((w) => w.jobs.size === 0);
    if (idle) return idle;
    if (this.#workers.length < this.size) {
      const worker = new ZstdWorker(this.#source, (dead) => {
        const at = this.#workers.indexOf(dead);
        if (at >= 0) this.#workers.splice(at, 1);
      });
      this.#workers.push(worker);
      return worker;
    }
    return this.#workers.reduce((a, b) => (b.jobs.size < a.jobs.size ? b : a));
  }
}

let pool: ZstdPool | null = null;

function zstdPool(): ZstdPool {
  pool ??= new ZstdPool(availableParallelism());
  return pool;
}

/** The first four bytes of a zstd frame, little-endian (RFC 8878 §3.1.1). */
export const ZSTD_MAGIC = 0xfd2fb528;

/**
 * A zstd decompressing stream. fzstd is plain JavaScript, on every supported Node (zlib's zstd
 * arrived in Node 22.15); any zstd stream, of one frame or many, whoever wrote it.
 */
export function zstdDecompressor(): Transform {
  let push: (chunk: Buffer) => void = () => {};
  const decompress = new Decompress((chunk) => push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)));
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      push = (out) => this.push(out);
      try {
        decompress.push(chunk);
        callback();
      } catch (err) {
        callback(err as Error);
      }
    },
    flush(callback) {
      push = (out) => this.push(out);
      try {
        decompress.push(new Uint8Array(0), true);
        callback();
      } catch (err) {
        callback(err as Error);
      }
    },
  });
}

export interface LayerScan {
  /** `/nix/store/<name>` of every store path the layer has entries under, sorted. */
  storePaths: string[];
  /** First path components of the layer's entries (`nix`, `bin`, `etc`), sorted. */
  topLevel: string[];
  uncompressedSize: number;
  /** `sha256:<hex>` of the uncompressed tar. */
  diffId: string;
}
