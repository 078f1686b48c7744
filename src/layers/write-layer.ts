import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { UserError } from '../util/errors.js';
import type { Compression, LayerBlob, LayerSource } from './types.js';
import { TarWriter, type ChunkSink } from './tar-writer.js';
import { acquireWorker, releaseWorker, type FromWorker, type LayerWorker, type WorkerListener } from './layer-worker.js';

export interface WriteLayerOptions {
  compression: Compression;
  /** Directory the blob is written to, as `<dir>/<digest hex>`. */
  dir: string;
  /** Seconds since the epoch for every entry's mtime (SOURCE_DATE_EPOCH). */
  mtime: number;
  /** zlib level 1–9 for gzip; default 6 (zlib's default, as Docker uses). */
  gzipLevel?: number;
}

export const DEFAULT_GZIP_LEVEL = 6;

/** Tar bytes travel to the worker in chunks this large; this many may be in flight (memory bound 8 MiB). */
const CHUNK_SIZE = 1 << 20;
const MAX_CHUNKS_IN_FLIGHT = 8;

/**
 * Writes one layer in a single pass: the source's entries are encoded as a deterministic tar on this
 * thread; a worker thread hashes the tar (diffID), gzips it if asked, hashes the blob (digest) and writes
 * it to a temp file in `dir`, renamed to `<dir>/<digest hex>` once complete. Nothing is tarred or
 * compressed twice and no layer is held in memory.
 */
export async function writeLayer(source: LayerSource, options: WriteLayerOptions): Promise<LayerBlob> {
  const level = options.gzipLevel ?? DEFAULT_GZIP_LEVEL;
  if (options.compression !== 'gzip' && options.compression !== 'none') {
    throw new UserError(`unknown compression "${String(options.compression)}" (use gzip or none)`);
  }
  if (!Number.isInteger(level) || level < 1 || level > 9) throw new UserError(`gzip level must be 1 to 9, got ${level}`);

  const worker = await acquireWorker();
  const job = new LayerJob(worker, options.dir);
  try {
    const tar = new TarWriter(job, { mtime: options.mtime });
    worker.post({ type: 'start', tempFile: job.tempFile, dir: options.dir, compression: options.compression, level });
    await source(tar);
    await tar.finish();
    const done = await job.end();
    return {
      file: done.file,
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
    job.close();
    releaseWorker(worker);
  }
}

type Done = Extract<FromWorker, { type: 'done' }>;

/** The main thread's side of one layer being written: hands out chunk buffers and follows the worker. */
class LayerJob implements ChunkSink, WorkerListener {
  readonly tempFile: string;
  readonly #worker: LayerWorker;
  readonly #dir: string;
  /** Buffers allocated for this worker and not yet garbage; the rest are in flight. */
  #allocated: number;
  #bufferWaiters: { resolve: (b: Buffer) => void; reject: (e: Error) => void }[] = [];
  #failure: Error | null = null;
  #ended: { resolve: (d: Done) => void; reject: (e: Error) => void } | null = null;
  #aborted: (() => void) | null = null;

  constructor(worker: LayerWorker, dir: string) {
    this.#worker = worker;
    this.#dir = dir;
    this.#allocated = worker.spareBuffers.length;
    this.tempFile = join(dir, `.layer-${process.pid}-${randomBytes(6).toString('hex')}.tmp`);
    worker.attach(this);
  }

  acquire(): Buffer | Promise<Buffer> {
    if (this.#failure) throw this.#failure;
    const spare = this.#worker.spareBuffers.pop();
    if (spare) return spare;
    if (this.#allocated < MAX_CHUNKS_IN_FLIGHT) {
      this.#allocated++;
      // Unpooled, so the buffer owns its whole ArrayBuffer and can be transferred.
      return Buffer.allocUnsafeSlow(CHUNK_SIZE);
    }
    return new Promise((resolve, reject) => this.#bufferWaiters.push({ resolve, reject }));
  }

  submit(chunk: Buffer, length: number): void {
    if (this.#failure) throw this.#failure;
    const buf = chunk.buffer as ArrayBuffer;
    if (chunk.byteOffset !== 0 || buf.byteLength !== chunk.length) throw new Error('layer chunk must own its ArrayBuffer');
    this.#worker.post({ type: 'chunk', buf, length }, [buf]);
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
    // Chunks the worker held when it stopped are gone with it; the next job allocates afresh.
    this.#worker.spareBuffers.length = 0;
  }

  close(): void {
    if (this.#failure || this.#aborted) this.#worker.spareBuffers.length = 0;
  }

  onMessage(message: FromWorker): void {
    switch (message.type) {
      case 'free': {
        const buffer = Buffer.from(message.buf);
        const waiter = this.#bufferWaiters.shift();
        if (waiter) waiter.resolve(buffer);
        else this.#worker.spareBuffers.push(buffer);
        break;
      }
      case 'done':
        this.#ended?.resolve(message);
        break;
      case 'error':
        this.#fail(new UserError(`cannot write layer in ${this.#dir}: ${message.message}`));
        break;
      case 'aborted':
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
    for (const waiter of this.#bufferWaiters.splice(0)) waiter.reject(this.#failure);
    this.#ended?.reject(this.#failure);
  }
}
