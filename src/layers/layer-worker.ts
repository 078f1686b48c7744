import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';

/**
 * A small pool of worker threads that turn a stream of tar chunks into a layer blob file:
 * sha256 of the tar (diffID) → optional gzip → sha256 of the blob (digest) → temp file → rename.
 * Hashing, compressing and writing happen off the main thread, which only encodes the tar, so reading
 * NARs and writing layers overlap on separate cores. Workers are reused across layers and unref'd while idle.
 */

/** Messages from the main thread to a worker. Chunks travel as transferred ArrayBuffers (no copy). */
export type ToWorker =
  | { type: 'start'; tempFile: string; dir: string; compression: 'gzip' | 'none'; level: number }
  | { type: 'chunk'; buf: ArrayBuffer; length: number }
  | { type: 'end' }
  | { type: 'abort' };

export type FromWorker =
  | { type: 'free'; buf: ArrayBuffer }
  | { type: 'done'; file: string; diffId: string; digest: string; size: number; uncompressedSize: number }
  | { type: 'error'; message: string }
  | { type: 'aborted' };

/**
 * The worker's code, as plain CommonJS evaluated by `new Worker(…, { eval: true })`: it runs the same from
 * `dist/` and from TypeScript sources under vitest, where a sibling `.js` file would not exist.
 *
 * Gzip is written by hand around raw deflate: a fixed 10-byte header (no name, mtime 0, XFL 0, OS 3 = Unix)
 * and a CRC32/ISIZE trailer. zlib's own gzip header takes its OS byte from the platform it was built for,
 * and its XFL byte from the level, so the bytes would differ between macOS, Windows and Linux.
 */
const WORKER_SOURCE = `
'use strict';
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const zlib = require('node:zlib');

const GZIP_HEADER = Buffer.from([0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0x03]);
let job = null;

parentPort.on('message', (msg) => {
  try {
    if (msg.type === 'start') start(msg);
    else if (msg.type === 'chunk') chunk(msg);
    else if (msg.type === 'end') end();
    else if (msg.type === 'abort') abort();
  } catch (err) {
    fail(err);
  }
});

function start(msg) {
  const fd = fs.openSync(msg.tempFile, 'wx', 0o644);
  job = { fd, tempFile: msg.tempFile, dir: msg.dir, tar: createHash('sha256'), tarSize: 0, blob: null, blobSize: 0, crc: 0, deflate: null, failed: false };
  if (msg.compression === 'gzip') {
    const j = job;
    j.blob = createHash('sha256');
    j.deflate = zlib.createDeflateRaw({ level: msg.level, windowBits: 15, memLevel: 8, strategy: zlib.constants.Z_DEFAULT_STRATEGY });
    j.deflate.on('data', (out) => {
      if (j !== job || j.failed) return;
      try { emit(j, out); } catch (err) { fail(err); }
    });
    j.deflate.on('error', (err) => { if (j === job) fail(err); });
    emit(j, GZIP_HEADER);
  }
}

function emit(j, bytes) {
  j.blob.update(bytes);
  j.blobSize += bytes.length;
  writeAll(j.fd, bytes);
}

function writeAll(fd, bytes) {
  let off = 0;
  while (off < bytes.length) off += fs.writeSync(fd, bytes, off, bytes.length - off);
}

function chunk(msg) {
  const j = job;
  if (!j || j.failed) return;
  const view = Buffer.from(msg.buf, 0, msg.length);
  j.tar.update(view);
  j.tarSize += msg.length;
  if (!j.deflate) {
    writeAll(j.fd, view);
    parentPort.postMessage({ type: 'free', buf: msg.buf }, [msg.buf]);
    return;
  }
  j.crc = zlib.crc32(view, j.crc);
  // zlib reads the chunk asynchronously: it goes back to the main thread only once consumed.
  j.deflate.write(view, () => { if (j === job) parentPort.postMessage({ type: 'free', buf: msg.buf }, [msg.buf]); });
}

function end() {
  const j = job;
  if (!j || j.failed) return;
  if (!j.deflate) return finish(j, j.tar.copy(), j.tarSize);
  j.deflate.on('end', () => {
    if (j !== job || j.failed) return;
    try {
      const trailer = Buffer.alloc(8);
      trailer.writeUInt32LE(j.crc >>> 0, 0);
      trailer.writeUInt32LE(j.tarSize % 0x100000000, 4);
      emit(j, trailer);
      finish(j, j.blob, j.blobSize);
    } catch (err) {
      fail(err);
    }
  });
  j.deflate.end();
}

function finish(j, blobHash, size) {
  fs.closeSync(j.fd);
  const diffId = j.tar.digest('hex');
  const digest = blobHash.digest('hex');
  const file = path.join(j.dir, digest);
  fs.renameSync(j.tempFile, file);
  job = null;
  parentPort.postMessage({ type: 'done', file, diffId: 'sha256:' + diffId, digest: 'sha256:' + digest, size, uncompressedSize: j.tarSize });
}

function cleanup(j) {
  if (j.deflate) j.deflate.destroy();
  try { fs.closeSync(j.fd); } catch {}
  try { fs.unlinkSync(j.tempFile); } catch {}
}

function fail(err) {
  const j = job;
  if (j && !j.failed) {
    j.failed = true;
    cleanup(j);
  }
  parentPort.postMessage({ type: 'error', message: (err && err.message) || String(err) });
}

function abort() {
  const j = job;
  job = null;
  if (j && !j.failed) cleanup(j);
  parentPort.postMessage({ type: 'aborted' });
}
`;

/** Receives one worker's messages while a job runs on it. */
export interface WorkerListener {
  onMessage(message: FromWorker): void;
  onCrash(error: Error): void;
}

export class LayerWorker {
  readonly #worker: Worker;
  #listener: WorkerListener | null = null;
  #dead = false;
  /** Chunk buffers this worker has handed back, kept for the next job. */
  readonly spareBuffers: Buffer[] = [];

  constructor() {
    this.#worker = new Worker(WORKER_SOURCE, { eval: true });
    this.#worker.on('message', (message: FromWorker) => this.#listener?.onMessage(message));
    this.#worker.on('error', (error) => this.#die(error));
    this.#worker.on('exit', (code) => this.#die(new Error(`layer worker thread exited with code ${code}`)));
    this.#worker.unref();
  }

  get dead(): boolean {
    return this.#dead;
  }

  /** Attaches a job; the worker keeps the process alive until `detach`. */
  attach(listener: WorkerListener): void {
    this.#listener = listener;
    this.#worker.ref();
  }

  detach(): void {
    this.#listener = null;
    this.#worker.unref();
  }

  post(message: ToWorker, transfer?: ArrayBuffer[]): void {
    this.#worker.postMessage(message, transfer);
  }

  #die(error: Error): void {
    if (this.#dead) return;
    this.#dead = true;
    this.#listener?.onCrash(error);
  }
}

const idle: LayerWorker[] = [];
const waiting: ((worker: LayerWorker) => void)[] = [];
let live = 0;

/** A worker for one job; at most one per core exist, further callers wait for one to be released. */
export async function acquireWorker(): Promise<LayerWorker> {
  while (idle.length > 0) {
    const worker = idle.pop()!;
    if (!worker.dead) return worker;
    live--;
  }
  if (live < availableParallelism()) {
    live++;
    return new LayerWorker();
  }
  return new Promise((resolve) => waiting.push(resolve));
}

export function releaseWorker(worker: LayerWorker): void {
  worker.detach();
  if (worker.dead) {
    live--;
    const next = waiting.shift();
    if (next) {
      live++;
      next(new LayerWorker());
    }
    return;
  }
  const next = waiting.shift();
  if (next) next(worker);
  else idle.push(worker);
}
