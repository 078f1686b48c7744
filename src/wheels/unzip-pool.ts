import { availableParallelism } from 'node:os';
import { UserError } from '../util/errors.js';
import { sharedThreads, type Connection, type Service, type Thread, type Threads } from '../util/threads.js';
import { rawZlib } from '../util/raw-zlib.js';
import { localHeaderDisagreement, unzipWorkerMain, type EntryRequest, type UnzipMessage, type UnzipReply } from './unzip-worker.js';

/**
 * Wheel entries read, inflated and checked against RECORD on worker threads, so that installing a
 * wheel leaves the main thread only the tar to write: the entries are independent, and inflating and
 * hashing them is most of an install's work. Small entries go in batches (one message for many
 * files); a large one streams in chunks that travel to the main thread and back, a few at a time.
 * Memory is bounded per reader (WINDOW bytes read ahead) whatever the wheel's size.
 */

/** Entries up to this size are read whole, in batches of up to BATCH_BYTES (each batch's buffer holds that much). */
const SMALL_ENTRY = 1 << 20;
const BATCH_BYTES = 2 << 20;
const BATCH_ENTRIES = 512;
/** A large entry's chunks, and how many of them may be away from the worker at once. */
const CHUNK_SIZE = 1 << 20;
const CHUNK_CREDITS = 2;
/** Bytes of entries one reader asks for ahead of what its consumer has taken. */
const WINDOW = 4 << 20;
/**
 * Buffers kept for reuse, of each size: memory that goes round instead of garbage for the collector.
 * As many as the readers have in flight at once (two layers, each WINDOW ahead): a buffer dropped here
 * waits for this thread's next full collection, and meanwhile the thread that made it makes another
 * (its malloc arena grew by tens of MB that way).
 */
const SPARES = 8;

/** The unzip service (see unzipWorkerMain), as the threads run it, given the local header check it shares with ZipReader and its inflater. */
const UNZIP_SERVICE: Service = { name: 'unzip', source: `(port) => (${unzipWorkerMain.toString()})(port, ${localHeaderDisagreement.toString()}, ${rawZlib.toString()})` };

interface Job {
  message: Extract<UnzipMessage, { type: 'batch' | 'stream' | 'layer' }>;
  /** Every reply to this job, in order; the last one is `batch`, `end`, `layer` or `failed`. */
  onReply: (reply: UnzipReply) => void;
  worker?: UnzipWorker;
}

/**
 * The pool's line to one thread. It runs at most one batch at a time (synchronous work there) and any
 * number of streams, which wait for their chunks to come back without holding the thread: a stream
 * whose consumer is slow never stops another reader's entries.
 */
class UnzipWorker {
  readonly connection: Connection;
  readonly jobs = new Map<number, Job>();
  batches = 0;

  constructor(
    readonly index: number,
    thread: Thread,
    onBatchDone: (w: UnzipWorker) => void,
    onDead: (w: UnzipWorker) => void,
  ) {
    let dead = false;
    this.connection = thread.connect(UNZIP_SERVICE, (error) => {
      if (dead) return;
      dead = true;
      const jobs = [...this.jobs.values()];
      this.jobs.clear();
      this.batches = 0;
      const message = (error ?? new Error('unzip thread stopped')).message;
      for (const job of jobs) job.onReply({ type: 'failed', id: job.message.id, index: 0, message, userError: false });
      onDead(this);
    });
    this.connection.port.on('message', (reply: UnzipReply) => {
      const job = this.jobs.get(reply.id);
      if (!job) return;
      const last = reply.type !== 'chunk' && reply.type !== 'progress';
      const batch = job.message.type === 'batch';
      if (last) {
        this.jobs.delete(reply.id);
        if (batch) this.batches--;
        if (this.jobs.size === 0) this.connection.idle();
      }
      job.onReply(reply);
      if (last && batch) onBatchDone(this);
    });
  }

  run(job: Job): void {
    const message = job.message;
    this.jobs.set(message.id, job);
    if (message.type === 'batch') this.batches++;
    job.worker = this;
    this.connection.busy();
    const moved = message.type === 'batch' ? (message.buffer ? [message.buffer] : []) : message.type === 'stream' ? message.buffers : movable(message.frame);
    this.connection.post(message, moved);
  }

  send(message: UnzipMessage, transfer: ArrayBuffer[] = []): void {
    this.connection.post(message, transfer);
  }
}

/**
 * A pool of unzip jobs: one per build (its size from --jobs), passed to the wheel layer sources. It runs
 * on the first `threads` of the shared threads, which start on demand. Batches run in the order given,
 * one per thread at a time; streams start at once, on the thread with the fewest.
 */
export class UnzipPool {
  readonly #workers: UnzipWorker[] = [];
  /** Batches waiting for a thread. */
  readonly #queue: Job[] = [];
  readonly #spares = new Map<number, ArrayBuffer[]>();
  #nextId = 1;

  constructor(
    readonly threads: number = availableParallelism(),
    private readonly on: Threads = sharedThreads(),
  ) {
    if (!Number.isInteger(threads) || threads < 1) throw new Error(`unzip pool threads must be a whole number of at least 1, got ${threads}`);
  }

  /**
   * The bodies of `entries` of the wheel `file`, to be taken in this order (see EntryBodies). Each is
   * checked against its local header, its size and RECORD's hash before it is handed out whole; a
   * large one is checked as it streams, and its last chunk is followed by the error if it fails.
   */
  bodies(file: string, entries: EntryRequest[]): EntryBodies {
    return new EntryBodies(this, file, entries);
  }

  /**
   * Writes a whole uncompressed layer on a thread: `frame`'s bytes with the body of each of `entries`
   * (from the wheel `file`, checked as bodies() checks them) in its gap, at byte `at` of the open file
   * `fd`, which the caller keeps open until this settles. Resolves to the tar's sha256 and the indexes
   * of the entries whose bodies are ELF files. `stop` makes it stop (it then rejects). A frame that
   * is a buffer of its own moves to the thread: it is empty here afterwards.
   */
  writeLayer(
    file: string,
    out: { fd: number; at: number },
    frame: Buffer,
    gaps: number[],
    entries: EntryRequest[],
    options: { onBytes?: (bytes: number) => void; stop?: AbortSignal } = {},
  ): Promise<{ hex: string; elf: number[] }> {
    return new Promise((resolve, reject) => {
      const job: Job = {
        message: { type: 'layer', id: this.id(), file, fd: out.fd, at: out.at, frame, gaps, entries },
        onReply: (reply) => {
          if (reply.type === 'progress') return options.onBytes?.(reply.bytes);
          if (reply.type === 'layer') return resolve({ hex: reply.hex, elf: reply.elf });
          if (reply.type === 'failed') reject(replyError(reply));
        },
      };
      this.submit(job);
      options.stop?.addEventListener('abort', () => job.worker?.send({ type: 'cancel', id: job.message.id }), { once: true });
    });
  }

  /** @internal */
  id(): number {
    return this.#nextId++;
  }

  /** @internal A buffer of `size` bytes used before, if one is kept. */
  spare(size: number): ArrayBuffer | null {
    return this.#spares.get(size)?.pop() ?? null;
  }

  /** @internal Keeps a buffer no longer used (its memory moves to the next job that takes it). */
  recycle(buffer: ArrayBuffer): void {
    const size = buffer.byteLength;
    if (size !== BATCH_BYTES && size !== CHUNK_SIZE) return;
    const kept = this.#spares.get(size) ?? [];
    this.#spares.set(size, kept);
    if (kept.length < SPARES) kept.push(buffer);
  }

  /** @internal Runs a job (a batch may wait for a thread; streams and layers start at once, on the thread with the fewest jobs); its worker is `job.worker` once it runs. */
  submit(job: Job): void {
    const message = job.message;
    if (message.type !== 'batch') {
      if (message.type === 'stream') message.buffers = Array.from({ length: message.credits }, () => this.spare(CHUNK_SIZE)).filter((b) => b !== null);
      const worker = this.#workers.length < this.threads ? this.#start() : this.#workers.reduce((a, b) => (b.jobs.size < a.jobs.size ? b : a));
      return worker.run(job);
    }
    message.buffer = this.spare(BATCH_BYTES);
    const worker = this.#workers.find((w) => w.batches === 0) ?? (this.#workers.length < this.threads ? this.#start() : null);
    if (worker) worker.run(job);
    else this.#queue.push(job);
  }

  /** @internal Drops a batch still waiting for a thread; false when it runs already (a stream always does). */
  withdraw(job: Job): boolean {
    const i = this.#queue.indexOf(job);
    if (i < 0) return false;
    this.#queue.splice(i, 1);
    const message = job.message;
    if (message.type === 'batch' && message.buffer) this.recycle(message.buffer);
    return true;
  }

  #batchDone = (worker: UnzipWorker): void => {
    const job = this.#queue.shift();
    if (job) worker.run(job);
  };

  #dead = (worker: UnzipWorker): void => {
    const i = this.#workers.indexOf(worker);
    if (i >= 0) this.#workers.splice(i, 1);
    const job = this.#queue.shift();
    if (job) this.#start().run(job);
  };

  #start(): UnzipWorker {
    const used = new Set(this.#workers.map((w) => w.index));
    let index = 0;
    while (used.has(index)) index++;
    const worker = new UnzipWorker(index, this.on.thread(index), this.#batchDone, this.#dead);
    this.#workers.push(worker);
    return worker;
  }
}

let shared: UnzipPool | undefined;
/** A pool of one thread per CPU, for callers that are not given one (a build passes its own). */
export function defaultUnzipPool(): UnzipPool {
  shared ??= new UnzipPool();
  return shared;
}

/** A job's outcome as its reader sees it: a batch's bodies, or a stream's chunks. */
type Pending =
  | { kind: 'batch'; job: Job; first: number; count: number; bytes: number; result: Promise<{ bodies: Buffer[]; memory: ArrayBuffer }> }
  | { kind: 'stream'; job: Job; index: number; bytes: number; chunks: ChunkQueue };

/**
 * One layer source's reads from one wheel: the entries' bodies in the order given, read ahead within
 * WINDOW bytes (a stream counts for the chunks it may fill ahead), so the next large file is being
 * inflated while this one is tarred.
 */
export class EntryBodies {
  readonly #jobs: { first: number; count: number; stream: boolean; bytes: number }[] = [];
  readonly #pending: Pending[] = [];
  #planned = 0;
  #taken = 0;
  #ahead = 0;
  #closed = false;

  constructor(
    private readonly pool: UnzipPool,
    private readonly file: string,
    private readonly entries: EntryRequest[],
  ) {
    for (let i = 0; i < entries.length; ) {
      const size = entries[i]!.central.uncompressedSize;
      if (size > SMALL_ENTRY) {
        this.#jobs.push({ first: i, count: 1, stream: true, bytes: Math.min(size, CHUNK_SIZE * CHUNK_CREDITS) });
        i++;
        continue;
      }
      let bytes = 0;
      let count = 0;
      while (i + count < entries.length && count < BATCH_ENTRIES) {
        const next = entries[i + count]!.central.uncompressedSize;
        if (next > SMALL_ENTRY || (count > 0 && bytes + next > BATCH_BYTES)) break;
        bytes += next;
        count++;
      }
      this.#jobs.push({ first: i, count, stream: false, bytes });
      i += count;
    }
    this.#fill();
  }

  /** The next entry's body, in chunks; take it whole before asking for the next. Throws the entry's error after its bytes. */
  async *next(): AsyncGenerator<Buffer> {
    const whole = this.whole();
    if (whole) {
      const { body, release } = await whole;
      try {
        if (body.length > 0) yield body;
      } finally {
        release();
      }
      return;
    }
    const index = this.#taken++;
    const pending = this.#pending[0];
    if (!pending || pending.kind !== 'stream') throw new Error(`no entry ${index} of ${this.file} was asked for`);
    let ended = false;
    try {
      for (;;) {
        const chunk = await pending.chunks.take();
        if (!chunk) {
          ended = true;
          break;
        }
        try {
          yield chunk;
        } finally {
          // The consumer asked for more (or stopped): it is done with this chunk.
          pending.chunks.giveBack(chunk);
        }
      }
    } finally {
      // A consumer that stopped early must not leave the worker waiting for its chunks back.
      if (!ended) this.#stop(pending);
      this.#done(pending);
    }
  }

  /**
   * The next entry's body whole, when it was read in a batch (null for a large entry: take it with
   * `next`). Call `release` once done with the bytes: they are the batch's memory, which goes round.
   * No generator and no chunks: most of a wheel's entries are small, and this is their fast path.
   */
  whole(): Promise<{ body: Buffer; release: () => void }> | null {
    const pending = this.#pending[0];
    if (!pending || pending.kind !== 'batch') return null;
    const index = this.#taken++;
    const last = index === pending.first + pending.count - 1;
    return pending.result.then(
      ({ bodies, memory }) => ({
        body: bodies[index - pending.first]!,
        release: () => {
          // Once the batch's last body was taken, its memory goes back for another batch.
          if (!last) return;
          this.pool.recycle(memory);
          this.#done(pending);
        },
      }),
      (err: unknown) => {
        if (last) this.#done(pending);
        throw err;
      },
    );
  }

  /** Stops every read still under way (after a failure); the reader is unusable afterwards. */
  close(): void {
    this.#closed = true;
    for (const pending of this.#pending.splice(0)) this.#stop(pending);
  }

  #stop(pending: Pending): void {
    if (this.pool.withdraw(pending.job)) return;
    if (pending.kind === 'stream') pending.chunks.cancel();
  }

  #done(pending: Pending): void {
    if (this.#pending[0] !== pending) return;
    this.#pending.shift();
    this.#ahead -= pending.bytes;
    this.#fill();
  }

  /** Asks for jobs while the window has room (always the next one). */
  #fill(): void {
    while (!this.#closed && this.#planned < this.#jobs.length) {
      const planned = this.#jobs[this.#planned]!;
      if (this.#pending.length > 0 && this.#ahead + planned.bytes > WINDOW) return;
      this.#planned++;
      this.#ahead += planned.bytes;
      this.#pending.push(planned.stream ? this.#stream(planned.first, planned.bytes) : this.#batch(planned.first, planned.count, planned.bytes));
    }
  }

  #batch(first: number, count: number, bytes: number): Pending {
    const entries = this.entries.slice(first, first + count);
    let job!: Job;
    const result = new Promise<{ bodies: Buffer[]; memory: ArrayBuffer }>((resolve, reject) => {
      job = {
        message: { type: 'batch', id: this.pool.id(), file: this.file, entries, capacity: BATCH_BYTES, buffer: null },
        onReply: (reply) => {
          if (reply.type === 'failed') return reject(replyError(reply));
          if (reply.type !== 'batch') return;
          const all = Buffer.from(reply.buffer);
          let at = 0;
          resolve({ bodies: reply.lengths.map((length) => all.subarray(at, (at += length))), memory: reply.buffer });
        },
      };
    });
    result.catch(() => {});
    this.pool.submit(job);
    return { kind: 'batch', job, first, count, bytes, result };
  }

  #stream(index: number, bytes: number): Pending {
    const chunks = new ChunkQueue(this.pool);
    const job: Job = {
      message: { type: 'stream', id: this.pool.id(), file: this.file, entry: this.entries[index]!, chunkSize: CHUNK_SIZE, credits: CHUNK_CREDITS, buffers: [] },
      onReply: (reply) => chunks.receive(reply),
    };
    chunks.bind(job);
    this.pool.submit(job);
    return { kind: 'stream', job, index, bytes, chunks };
  }
}

/** A stream's chunks as they arrive, handed out in order; each given back to its worker once used. */
class ChunkQueue {
  readonly #arrived: Buffer[] = [];
  #end: { error: Error | null } | null = null;
  #waiter: (() => void) | null = null;
  #job!: Job;

  constructor(private readonly pool: UnzipPool) {}

  bind(job: Job): void {
    this.#job = job;
  }

  receive(reply: UnzipReply): void {
    if (reply.type === 'chunk') this.#arrived.push(Buffer.from(reply.buffer, 0, reply.length));
    else if (reply.type === 'end') {
      this.#end = { error: null };
      for (const buffer of reply.buffers) this.pool.recycle(buffer);
    }
    else if (reply.type === 'failed') this.#end = { error: replyError(reply) };
    const wake = this.#waiter;
    this.#waiter = null;
    wake?.();
  }

  /** The next chunk; null at the end; throws the stream's error once its chunks are taken. */
  async take(): Promise<Buffer | null> {
    while (this.#arrived.length === 0 && !this.#end) await new Promise<void>((resolve) => (this.#waiter = resolve));
    const chunk = this.#arrived.shift();
    if (chunk) return chunk;
    if (this.#end!.error) throw this.#end!.error;
    return null;
  }

  /** The chunk's memory goes back to the worker to be filled again. */
  giveBack(chunk: Buffer): void {
    const worker = this.#job.worker;
    const memory = chunk.buffer as ArrayBuffer;
    if (this.#end || !worker) return this.pool.recycle(memory);
    worker.send({ type: 'credit', id: this.#job.message.id, buffer: memory }, [memory]);
  }

  cancel(): void {
    if (this.#end) return;
    this.#job.worker?.send({ type: 'cancel', id: this.#job.message.id });
  }
}

/** A layer's frame moves to its thread rather than being copied, when it is a buffer of its own (not a slice of Node's pool). */
function movable(frame: Uint8Array): ArrayBuffer[] {
  const memory = frame.buffer;
  return memory instanceof ArrayBuffer && frame.byteOffset === 0 && frame.byteLength === memory.byteLength ? [memory] : [];
}

function replyError(reply: Extract<UnzipReply, { type: 'failed' }>): Error {
  if (reply.userError) return new UserError(reply.message);
  // A failed write keeps the system's code, so the writer can name its file.
  return reply.code === undefined ? new Error(reply.message) : Object.assign(new Error(reply.message), { code: reply.code, syscall: reply.syscall });
}
