import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { UserError } from '../util/errors.js';
import type { Compression, LayerFile, LayerSource } from './types.js';
import { TarWriter, type ChunkSink } from '../tar/writer.js';
import { acquireCompressionTurn, releaseCompressionTurn } from './jobs.js';
import { acquireWorker, releaseWorker, type FromWorker, type LayerWorker, type WorkerListener } from './worker.js';

export interface WriteLayerOptions {
  compression: Compression;
  /** Directory the blob is written to, as `<dir>/<digest hex>`. */
  dir: string;
  /** Seconds since the epoch for every entry's mtime (SOURCE_DATE_EPOCH). */
  mtime: number;
  /** zlib level 1–9 for gzip; default 6 (zlib's default, as Docker uses). */
  gzipLevel?: number;
  /**
   * At most this many of this layer's parts compress at once (default: no bound of its own). All layers
   * together are bounded by `setLayerJobs` (`--jobs`).
   */
  jobs?: number;
}

export const DEFAULT_GZIP_LEVEL = 6;

/**
 * Writes one layer in a single pass: the source's entries are encoded as a deterministic tar on this
 * thread; a worker thread hashes the tar (diffID), gzips it if asked, hashes the blob (digest) and writes
 * it to a temp file in `dir`, renamed to `<dir>/<digest hex>` once complete. Nothing is tarred or
 * compressed twice and no layer is held in memory.
 *
 * A gzip blob is a series of gzip members (RFC 1952 §2.2), one per PART_SIZE of tar, each compressed
 * independently and in parallel; a tar smaller than one part is a single member. Every gzip reader
 * reads such a file as the one concatenated tar.
 */
export async function writeLayer(source: LayerSource, options: WriteLayerOptions): Promise<LayerFile> {
  const level = options.gzipLevel ?? DEFAULT_GZIP_LEVEL;
  if (options.compression !== 'gzip' && options.compression !== 'none') {
    throw new UserError(`unknown compression "${String(options.compression)}" (use gzip or none)`);
  }
  if (!Number.isInteger(level) || level < 1 || level > 9) throw new UserError(`gzip level must be 1 to 9, got ${level}`);
  const jobs = options.jobs ?? Infinity;
  if (jobs !== Infinity && (!Number.isInteger(jobs) || jobs < 1)) throw new UserError(`jobs must be a whole number of at least 1, got ${jobs}`);

  const worker = await acquireWorker();
  const job = new LayerJob(worker, options.dir, options.compression === 'gzip' ? jobs : 0);
  try {
    const tar = new TarWriter(job, { mtime: options.mtime });
    worker.post({ type: 'start', tempFile: job.tempFile, dir: options.dir, compression: options.compression, level });
    await source(tar);
    await tar.finish();
    const done = await job.end();
    return {
      file: done.file,
      pieces: [{ file: done.file, start: 0, length: done.size }],
      digest: done.digest,
      size: done.size,
      diffId: done.diffId,
      uncompressedSize: done.uncompressedSize,
      compression: options.compression,
    };
  } catch (error) {
    await job.abort();
    throw error;
  } finally {
    releaseWorker(worker);
  }
}

type Done = Extract<FromWorker, { type: 'done' }>;

/**
 * The main thread's side of one layer being written: hands out the worker's free slots and follows it.
 * With compression, a filled slot goes to the worker only with a compression turn (see jobs.ts), held
 * until the worker reports the part deflated.
 */
class LayerJob implements ChunkSink, WorkerListener {
  readonly tempFile: string;
  readonly #worker: LayerWorker;
  readonly #dir: string;
  readonly #free: number[];
  /** Parts of this layer compressing at once, at most; 0 when not compressing (no turns taken). */
  readonly #maxParts: number;
  #turnsHeld = 0;
  #partWaiters: (() => void)[] = [];
  #slotWaiters: { resolve: (b: Buffer) => void; reject: (e: Error) => void }[] = [];
  #failure: Error | null = null;
  #ended: { resolve: (d: Done) => void; reject: (e: Error) => void } | null = null;
  #aborted: (() => void) | null = null;

  constructor(worker: LayerWorker, dir: string, maxParts: number) {
    this.#worker = worker;
    this.#dir = dir;
    this.#maxParts = maxParts;
    // Every slot is free between jobs: a job ends only once the worker is done with all of them.
    this.#free = worker.slots.map((_, i) => i).reverse();
    this.tempFile = join(dir, `.layer-${process.pid}-${randomBytes(6).toString('hex')}.tmp`);
    worker.attach(this);
  }

  acquire(): Buffer | Promise<Buffer> {
    if (this.#failure) throw this.#failure;
    const slot = this.#free.pop();
    if (slot !== undefined) return this.#worker.slots[slot]!;
    return new Promise((resolve, reject) => this.#slotWaiters.push({ resolve, reject }));
  }

  submit(chunk: Buffer, length: number): void | Promise<void> {
    if (this.#failure) throw this.#failure;
    const slot = this.#worker.slots.indexOf(chunk);
    if (slot < 0) throw new Error('layer chunk is not one of the worker’s slots');
    if (this.#maxParts === 0) return this.#worker.post({ type: 'chunk', slot, length });
    return this.#submitWithTurn(slot, length);
  }

  async #submitWithTurn(slot: number, length: number): Promise<void> {
    if (this.#turnsHeld >= this.#maxParts) await new Promise<void>((resolve) => this.#partWaiters.push(resolve));
    const turn = acquireCompressionTurn();
    if (turn) await turn;
    this.#turnsHeld++;
    if (this.#failure) {
      this.#releaseTurns();
      throw this.#failure;
    }
    this.#worker.post({ type: 'chunk', slot, length });
  }

  #releaseTurns(count = this.#turnsHeld): void {
    for (let i = 0; i < count; i++) {
      this.#turnsHeld--;
      releaseCompressionTurn();
      this.#partWaiters.shift()?.();
    }
  }

  /** Tells the worker the tar is complete and waits for the blob. */
  end(): Promise<Done> {
    if (this.#failure) return Promise.reject(this.#failure);
    return new Promise((resolve, reject) => {
      this.#ended = { resolve, reject };
      this.#worker.post({ type: 'end' });
    });
  }

  /** Stops the worker's job and removes its temp file; never throws. */
  async abort(): Promise<void> {
    if (this.#worker.dead) return;
    await new Promise<void>((resolve) => {
      this.#aborted = resolve;
      this.#worker.post({ type: 'abort' });
    });
  }

  onMessage(message: FromWorker): void {
    switch (message.type) {
      case 'deflated':
        if (this.#turnsHeld > 0) this.#releaseTurns(1);
        break;
      case 'free': {
        const waiter = this.#slotWaiters.shift();
        if (waiter) waiter.resolve(this.#worker.slots[message.slot]!);
        else this.#free.push(message.slot);
        break;
      }
      case 'done':
        this.#ended?.resolve(message);
        break;
      case 'error':
        this.#fail(new UserError(`cannot write layer in ${this.#dir}: ${message.message}`));
        break;
      case 'aborted':
        this.#releaseTurns();
        this.#aborted?.();
        break;
    }
  }

  onCrash(error: Error): void {
    this.#fail(error);
    this.#aborted?.();
  }

  #fail(error: Error): void {
    this.#failure ??= error;
    // The worker frees no more slots: give back the turns its parts held.
    this.#releaseTurns();
    for (const waiter of this.#partWaiters.splice(0)) waiter();
    for (const waiter of this.#slotWaiters.splice(0)) waiter.reject(this.#failure);
    this.#ended?.reject(this.#failure);
  }
}
