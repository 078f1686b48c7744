import { Worker } from 'node:worker_threads';
import { layerJobs } from './jobs.js';

/**
 * A small pool of worker threads that turn a stream of tar chunks into a layer blob file:
 * sha256 of the tar (diffID) → optional gzip → sha256 of the blob (digest) → temp file → rename.
 * Hashing and writing happen off the main thread, which only encodes the tar, so reading NARs and writing
 * layers overlap on separate cores. With gzip, every chunk of the tar is deflated on its own, on the
 * thread pool, into one gzip member: the parts of a single huge layer compress on every core at once.
 * Workers are reused across layers and unref'd while idle.
 */

/**
 * Size of one chunk slot, and how many slots each worker shares with the main thread (16 MiB in all).
 * The tar writer fills a chunk before submitting it, so a chunk is also a gzip member's worth of tar:
 * the blob's bytes depend on this constant (and on nothing about the machine). Compressing 4 MiB parts
 * alone costs 0.03% in size against one stream on 192 MiB of the bench closure (1 MiB parts: 0.19%).
 */
export const SLOT_SIZE = 4 << 20;
export const PART_SIZE = SLOT_SIZE;
export const SLOT_COUNT = 4;

/**
 * Messages from the main thread to a worker. Tar bytes travel in slots of a SharedArrayBuffer the two
 * threads share for the worker's life: a message names a filled slot, the worker names it back when done.
 * (Transferring ArrayBuffers instead made the main thread's garbage collector account megabytes of
 * external memory per chunk and pause often.)
 */
export type ToWorker =
  | { type: 'init'; shared: SharedArrayBuffer }
  | { type: 'start'; tempFile: string; dir: string; compression: 'gzip' | 'none'; level: number }
  | { type: 'chunk'; slot: number; length: number }
  | { type: 'end' }
  | { type: 'abort' };

export type FromWorker =
  | { type: 'free'; slot: number }
  /** A part's deflate finished: its compression turn may go to another part. */
  | { type: 'deflated' }
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
/** zlib's output buffer: larger than its 16 KiB default, for fewer thread pool round trips. */
const DEFLATE_OUT_CHUNK = 256 << 10;
const DEFLATE_OPTIONS = [1, 2, 3, 4, 5, 6, 7, 8, 9].reduce((all, level) => {
  all[level] = { level, windowBits: 15, memLevel: 8, strategy: zlib.constants.Z_DEFAULT_STRATEGY, chunkSize: DEFLATE_OUT_CHUNK };
  return all;
}, {});
const SLOT_SIZE = ${SLOT_SIZE};
let job = null;
let shared = null;

parentPort.on('message', (msg) => {
  try {
    if (msg.type === 'init') shared = msg.shared;
    else if (msg.type === 'start') start(msg);
    else if (msg.type === 'chunk') chunk(msg);
    else if (msg.type === 'end') end();
    else if (msg.type === 'abort') abort();
  } catch (err) {
    fail(job, err);
  }
});

function start(msg) {
  const fd = fs.openSync(msg.tempFile, 'wx', 0o644);
  job = {
    fd, tempFile: msg.tempFile, dir: msg.dir, tar: createHash('sha256'), tarSize: 0,
    blob: msg.compression === 'gzip' ? createHash('sha256') : null, level: msg.level,
    // Members by sequence number: compressed out of order on the thread pool, emitted in order.
    nextPart: 0, nextEmit: 0, members: new Map(), ending: false,
    written: 0, queue: [], pendingWrites: 0, whenIdle: [], failed: false, renamed: false,
  };
}

/** Compressed bytes: hashed here, written behind (zlib hands out views it never rewrites). */
function emit(j, bytes) {
  j.blob.update(bytes);
  write(j, bytes, null);
}

/**
 * Writes at the next file position on the thread pool, so writing (page cache copies, as costly here
 * as hashing) overlaps hashing on this thread. One write at a time: concurrent writes to one file only
 * contend for its lock. \`done\` runs once the bytes are in the file.
 */
function write(j, bytes, done) {
  j.queue.push({ bytes, position: j.written, done });
  j.written += bytes.length;
  j.pendingWrites++;
  if (j.pendingWrites === 1) writeNext(j);
}

function writeNext(j) {
  const { bytes, position, done } = j.queue[0];
  writeAt(j, bytes, 0, position, done);
}

function writeAt(j, bytes, offset, position, done) {
  fs.write(j.fd, bytes, offset, bytes.length - offset, position, (err, n) => {
    if (!err && !j.failed && offset + n < bytes.length) return writeAt(j, bytes, offset + n, position + n, done);
    j.queue.shift();
    j.pendingWrites--;
    if (err) fail(j, err);
    else if (!j.failed && done) done();
    if (j.failed) {
      // Nothing more is written; what was queued is dropped.
      j.pendingWrites -= j.queue.length;
      j.queue.length = 0;
    }
    if (j.pendingWrites > 0) writeNext(j);
    else for (const then of j.whenIdle.splice(0)) then();
  });
}

/** Runs \`then\` once no write is in flight: the fd must not be closed (and its number reused) under one. */
function afterWrites(j, then) {
  if (j.pendingWrites === 0) then();
  else j.whenIdle.push(then);
}

function chunk(msg) {
  const j = job;
  if (!j || j.failed) return;
  const view = Buffer.from(shared, msg.slot * SLOT_SIZE, msg.length);
  j.tar.update(view);
  j.tarSize += msg.length;
  const free = () => parentPort.postMessage({ type: 'free', slot: msg.slot });
  if (!j.blob) return write(j, view, free);
  // Each chunk is one part of the tar and becomes one gzip member of its own, deflated on the thread pool
  // while other parts (of this layer or others) are: the main thread bounds how many are in flight.
  const seq = j.nextPart++;
  const crc = zlib.crc32(view, 0);
  const length = msg.length;
  zlib.deflateRaw(view, DEFLATE_OPTIONS[j.level], (err, deflated) => {
    if (j.failed) return;
    if (err) return fail(j, err);
    parentPort.postMessage({ type: 'deflated' });
    // The slot stays taken until its member is written out: members waiting behind a slow earlier
    // part are bounded by the slots.
    j.members.set(seq, { deflated, crc, length, free });
    emitMembers(j);
  });
}

/** Emits the members that are next in order: header, deflate stream, CRC32 and ISIZE trailer (RFC 1952). */
function emitMembers(j) {
  for (let m = j.members.get(j.nextEmit); m; m = j.members.get(j.nextEmit)) {
    j.members.delete(j.nextEmit++);
    const trailer = Buffer.alloc(8);
    trailer.writeUInt32LE(m.crc >>> 0, 0);
    trailer.writeUInt32LE(m.length, 4);
    emit(j, GZIP_HEADER);
    emit(j, m.deflated);
    emit(j, trailer);
    m.free();
  }
  if (j.ending && j.nextEmit === j.nextPart) afterWrites(j, () => finish(j, j.blob, j.written));
}

function end() {
  const j = job;
  if (!j || j.failed) return;
  if (!j.blob) return afterWrites(j, () => finish(j, j.tar.copy(), j.written));
  j.ending = true;
  emitMembers(j);
}

function finish(j, blobHash, size) {
  if (j.failed) return;
  try {
    fs.closeSync(j.fd);
    j.fd = -1;
    const diffId = j.tar.digest('hex');
    const digest = blobHash.digest('hex');
    const file = path.join(j.dir, digest);
    fs.renameSync(j.tempFile, file);
    j.renamed = true;
    if (job === j) job = null;
    parentPort.postMessage({ type: 'done', file, diffId: 'sha256:' + diffId, digest: 'sha256:' + digest, size, uncompressedSize: j.tarSize });
  } catch (err) {
    fail(j, err);
  }
}

/** Stops a job: no more work, and once its writes have landed, its fd closed and its temp file gone. */
function stop(j, then) {
  // Deflates still on the thread pool finish unheeded: their results are dropped.
  j.failed = true;
  j.members.clear();
  afterWrites(j, () => {
    if (j.fd >= 0) {
      try { fs.closeSync(j.fd); } catch {}
      j.fd = -1;
    }
    if (!j.renamed) {
      try { fs.unlinkSync(j.tempFile); } catch {}
    }
    then();
  });
}

function fail(j, err) {
  if (j && j.failed) return;
  if (j) stop(j, () => {});
  parentPort.postMessage({ type: 'error', message: (err && err.message) || String(err) });
}

function abort() {
  const j = job;
  job = null;
  if (!j) return parentPort.postMessage({ type: 'aborted' });
  stop(j, () => parentPort.postMessage({ type: 'aborted' }));
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
  /** The slots shared with the worker thread, as Buffers over one SharedArrayBuffer. */
  readonly slots: Buffer[];

  constructor() {
    const shared = new SharedArrayBuffer(SLOT_SIZE * SLOT_COUNT);
    this.slots = Array.from({ length: SLOT_COUNT }, (_, i) => Buffer.from(shared, i * SLOT_SIZE, SLOT_SIZE));
    this.#worker = new Worker(WORKER_SOURCE, { eval: true });
    this.#worker.postMessage({ type: 'init', shared } satisfies ToWorker);
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

  post(message: ToWorker): void {
    this.#worker.postMessage(message);
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

/** A worker for one layer; at most `layerJobs()` exist, further callers wait for one to be released. */
export async function acquireWorker(): Promise<LayerWorker> {
  while (idle.length > 0) {
    const worker = idle.pop()!;
    if (!worker.dead) return worker;
    live--;
  }
  if (live < layerJobs()) {
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
