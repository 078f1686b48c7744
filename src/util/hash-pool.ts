import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { BytePiece } from './pieces.js';

/**
 * sha256 of byte ranges of files, on worker threads (copying or comparing them on the way if asked): one core hashes about 1.1 GB/s, so indexing a
 * closure of many GB or checking a warm cache's blobs is bound by hashing, and spreading the ranges over
 * every core divides that time. A job is a list of pieces hashed as one stream (a composed layer is a
 * small head, ranges of several files and a small end). Workers read with their own buffers, so the
 * main thread only hands out jobs; they are unref'd while idle, so an idle pool never holds the process.
 */

export interface HashResult {
  /** `sha256:<hex>` */
  digest: string;
}

/** What a job does with the bytes besides hashing them: copy them into an open file, or compare them with one. */
export interface PieceJob {
  pieces: BytePiece[];
  /** Hash the bytes (default true). */
  hash?: boolean;
  /** Writes the bytes at `at` in the file open as `fd` (the caller keeps it open until the job ends). */
  copyTo?: { fd: number; at: number };
  /** Compares the bytes with those at `at` in the file open as `fd`; stops at the first difference. */
  compareWith?: { fd: number; at: number };
  progress?: (bytes: number) => void;
}

export interface PieceResult {
  /** `sha256:<hex>`, or null when not hashed or when a comparison stopped early. */
  digest: string | null;
  /** False when `compareWith` found a difference (or the file ended first). */
  same: boolean;
}

/** Why a piece could not be read: the file is gone or shorter than the range. */
export class HashReadError extends Error {
  constructor(
    readonly file: string,
    readonly code: string,
    /** The absolute offset where reading stopped. */
    readonly at: number,
  ) {
    super(`${file}: ${code === 'SHORT' ? `ends at byte ${at}, before the range does` : `cannot read at byte ${at}: ${code}`}`);
    this.name = 'HashReadError';
  }
}

type Job = PieceJob & { resolve: (r: PieceResult) => void; reject: (e: Error) => void };
type FromWorker =
  | { type: 'progress'; bytes: number }
  | { type: 'done'; hex: string | null; same: boolean }
  | { type: 'error'; file: string; code: string; at: number };

/** Bytes read per call, and how often a worker reports progress. */
const READ_SIZE = 1 << 20;
const PROGRESS_EVERY = 32 << 20;

const WORKER_SOURCE = `
'use strict';
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const fs = require('node:fs');
const buffer = Buffer.allocUnsafeSlow(${READ_SIZE});
const theirs = Buffer.allocUnsafeSlow(${READ_SIZE});
class Stop extends Error {}
parentPort.on('message', ({ pieces, hash: wanted, copyTo, compareWith }) => {
  const hash = wanted ? createHash('sha256') : null;
  let unreported = 0;
  let out = 0;
  const take = (bytes) => {
    if (hash) hash.update(bytes);
    if (copyTo) {
      try {
        for (let done = 0; done < bytes.length; ) done += fs.writeSync(copyTo.fd, bytes, done, bytes.length - done, copyTo.at + out + done);
      } catch (err) {
        err.output = true;
        throw err;
      }
    }
    if (compareWith) {
      const other = theirs.subarray(0, bytes.length);
      let got = 0;
      while (got < other.length) {
        const n = fs.readSync(compareWith.fd, other, got, other.length - got, compareWith.at + out + got);
        if (n === 0) break;
        got += n;
      }
      if (got !== other.length || !other.equals(bytes)) throw new Stop();
    }
    out += bytes.length;
  };
  try {
    for (const piece of pieces) {
      if (piece.bytes) { take(piece.bytes); continue; }
      let fd;
      let at = piece.start;
      try {
        fd = fs.openSync(piece.file, 'r');
        const end = piece.start + piece.length;
        while (at < end) {
          const n = fs.readSync(fd, buffer, 0, Math.min(buffer.length, end - at), at);
          if (n === 0) throw Object.assign(new Error('short'), { code: 'SHORT' });
          take(n === buffer.length ? buffer : buffer.subarray(0, n));
          at += n;
          unreported += n;
          if (unreported >= ${PROGRESS_EVERY}) { parentPort.postMessage({ type: 'progress', bytes: unreported }); unreported = 0; }
        }
      } catch (err) {
        if (err instanceof Stop) throw err;
        // A failed write, not a failed read: reported as the output's (file '').
        if (err.output) return parentPort.postMessage({ type: 'error', file: '', code: err.code || String(err), at: copyTo.at + out });
        return parentPort.postMessage({ type: 'error', file: piece.file, code: err.code || String(err), at });
      } finally {
        if (fd !== undefined) fs.closeSync(fd);
      }
    }
  } catch (err) {
    if (err instanceof Stop) return parentPort.postMessage({ type: 'done', hex: null, same: false });
    return parentPort.postMessage({ type: 'error', file: '', code: err.code || String(err), at: 0 });
  }
  if (unreported > 0) parentPort.postMessage({ type: 'progress', bytes: unreported });
  parentPort.postMessage({ type: 'done', hex: hash ? hash.digest('hex') : null, same: true });
});
`;

class HashWorker {
  readonly worker: Worker;
  job: Job | null = null;
  dead = false;

  constructor(onIdle: (w: HashWorker) => void, onDead: (w: HashWorker, error: Error) => void) {
    this.worker = new Worker(WORKER_SOURCE, { eval: true });
    this.worker.unref();
    this.worker.on('message', (m: FromWorker) => {
      const job = this.job;
      if (!job) return;
      if (m.type === 'progress') return job.progress?.(m.bytes);
      this.job = null;
      this.worker.unref();
      if (m.type === 'done') job.resolve({ digest: m.hex === null ? null : `sha256:${m.hex}`, same: m.same });
      else job.reject(new HashReadError(m.file, m.code, m.at));
      onIdle(this);
    });
    const die = (error: Error) => {
      if (this.dead) return;
      this.dead = true;
      this.job?.reject(error);
      this.job = null;
      onDead(this, error);
    };
    this.worker.on('error', die);
    this.worker.on('exit', (code) => die(new Error(`hash worker exited with code ${code}`)));
  }

  run(job: Job): void {
    this.job = job;
    this.worker.ref();
    // Buffers are copied by postMessage; file pieces are only names and numbers, and fds are the process's.
    this.worker.postMessage({ pieces: job.pieces, hash: job.hash !== false, copyTo: job.copyTo, compareWith: job.compareWith });
  }
}

const idle: HashWorker[] = [];
const queue: Job[] = [];
let live = 0;
let size = availableParallelism();

/** How many threads hash at once (default: the number of CPUs; build-image sets it from --jobs). */
export function setHashThreads(count: number): void {
  size = Math.max(1, count);
}

function next(worker: HashWorker): void {
  const job = queue.shift();
  if (job) worker.run(job);
  else idle.push(worker);
}

function dead(worker: HashWorker): void {
  live--;
  const i = idle.indexOf(worker);
  if (i >= 0) idle.splice(i, 1);
  if (queue.length > 0) start();
}

function start(): void {
  live++;
  next(new HashWorker(next, dead));
}

/** sha256 of the pieces, in order, as one stream. Rejects with HashReadError if a file range cannot be read. */
export async function sha256Pieces(pieces: BytePiece[], progress?: (bytes: number) => void): Promise<HashResult> {
  const { digest } = await runPieces({ pieces, progress });
  return { digest: digest! };
}

/**
 * Reads the pieces on a pool thread, hashing them and copying them into a file or comparing them with
 * one, in one pass. Rejects with HashReadError if a piece cannot be read (`file` is '' when the output
 * could not be written or read instead).
 */
export function runPieces(request: PieceJob): Promise<PieceResult> {
  return new Promise((resolve, reject) => {
    const job: Job = { ...request, resolve, reject };
    const worker = idle.pop();
    if (worker) return worker.run(job);
    queue.push(job);
    if (live < size) start();
  });
}
