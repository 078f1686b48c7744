import { availableParallelism } from 'node:os';
import type { BytePiece } from './pieces.js';
import { hashWorkerMain, type WorkerJob, type WorkerReply } from './hash-worker.js';
import { sharedThreads, type Connection, type Service, type Thread, type Threads } from './threads.js';

/**
 * sha256 of byte ranges of files, on worker threads (copying or comparing them on the way if asked): one core hashes about 1.1 GB/s, so indexing a
 * closure of many GB or checking a warm cache's blobs is bound by hashing, and spreading the ranges over
 * every core divides that time. A job is a list of pieces hashed as one stream (a composed layer is a
 * small head, ranges of several files and a small end). Threads read with their own buffers, so the
 * main thread only hands out jobs; an idle pool never holds the process.
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
type FromWorker = WorkerReply;

/** Bytes read per call, and how often a worker reports progress. */
const READ_SIZE = 1 << 20;
const PROGRESS_EVERY = 32 << 20;

/** The hash service (see hashWorkerMain), as the threads run it. */
const HASH_SERVICE: Service = { name: 'hash', source: `(port) => (${hashWorkerMain.toString()})(port, ${READ_SIZE}, ${PROGRESS_EVERY})` };

/** The pool's line to one thread: one job at a time. */
class HashWorker {
  readonly connection: Connection;
  job: Job | null = null;
  dead = false;

  constructor(
    readonly index: number,
    thread: Thread,
    onIdle: (w: HashWorker) => void,
    onDead: (w: HashWorker) => void,
  ) {
    const die = (error: Error | null) => {
      if (this.dead) return;
      this.dead = true;
      if (this.job) this.job.reject(error ?? new Error('hash thread stopped'));
      this.job = null;
      onDead(this);
    };
    this.connection = thread.connect(HASH_SERVICE, die);
    this.connection.port.on('message', (m: FromWorker) => {
      const job = this.job;
      if (!job) return;
      if (m.type === 'progress') return job.progress?.(m.bytes);
      this.job = null;
      this.connection.idle();
      if (m.type === 'done') job.resolve({ digest: m.hex === null ? null : `sha256:${m.hex}`, same: m.same });
      else job.reject(new HashReadError(m.file, m.code, m.at));
      onIdle(this);
    });
  }

  /** The pool is done with this line (the thread goes on serving others). */
  retire(): void {
    this.dead = true;
    this.connection.close();
  }

  run(job: Job): void {
    this.job = job;
    this.connection.busy();
    // Buffers are copied by postMessage; file pieces are only names and numbers, and fds are the process's.
    const message: WorkerJob = { pieces: job.pieces, hash: job.hash !== false, copyTo: job.copyTo, compareWith: job.compareWith };
    this.connection.post(message);
  }
}

/**
 * A pool of hash jobs: one per build (its size from --jobs), passed to whatever hashes or copies file
 * ranges. It runs on the first `threads` of the shared threads, which start on demand.
 */
export class HashPool {
  readonly #idle: HashWorker[] = [];
  readonly #queue: Job[] = [];
  readonly #live = new Set<HashWorker>();

  constructor(
    readonly threads: number = availableParallelism(),
    private readonly on: Threads = sharedThreads(),
  ) {
    if (!Number.isInteger(threads) || threads < 1) throw new Error(`hash pool threads must be a whole number of at least 1, got ${threads}`);
  }

  /** sha256 of the pieces, in order, as one stream. Rejects with HashReadError if a file range cannot be read. */
  async sha256(pieces: BytePiece[], progress?: (bytes: number) => void): Promise<HashResult> {
    const { digest } = await this.run({ pieces, progress });
    return { digest: digest! };
  }

  /**
   * Reads the pieces on a pool thread, hashing them and copying them into a file or comparing them with
   * one, in one pass. Rejects with HashReadError if a piece cannot be read (`file` is '' when the output
   * could not be written or read instead).
   */
  run(request: PieceJob): Promise<PieceResult> {
    return new Promise((resolve, reject) => {
      const job: Job = { ...request, resolve, reject };
      const worker = this.#idle.pop();
      if (worker) return worker.run(job);
      this.#queue.push(job);
      if (this.#live.size < this.threads) this.#start();
    });
  }

  /** Lets go of the idle lines to the threads (a later job makes one again). */
  close(): void {
    for (const worker of this.#idle.splice(0)) {
      this.#live.delete(worker);
      worker.retire();
    }
  }

  #next = (worker: HashWorker): void => {
    const job = this.#queue.shift();
    if (job) worker.run(job);
    else this.#idle.push(worker);
  };

  #dead = (worker: HashWorker): void => {
    this.#live.delete(worker);
    const i = this.#idle.indexOf(worker);
    if (i >= 0) this.#idle.splice(i, 1);
    if (this.#queue.length > 0) this.#start();
  };

  #start(): void {
    const used = new Set([...this.#live].map((w) => w.index));
    let index = 0;
    while (used.has(index)) index++;
    const worker = new HashWorker(index, this.on.thread(index), this.#next, this.#dead);
    this.#live.add(worker);
    this.#next(worker);
  }
}

let shared: HashPool | undefined;
/** A pool of one thread per CPU, for callers that are not given one (a build passes its own). */
export function defaultHashPool(): HashPool {
  shared ??= new HashPool();
  return shared;
}
