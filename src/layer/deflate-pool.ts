import { availableParallelism } from 'node:os';
import type { ZlibOptions } from 'node:zlib';
import { rawZlib } from '../util/raw-zlib.js';
import { sharedThreads, type Connection, type Service, type Threads } from '../util/threads.js';
import { deflateWorkerMain, type DeflateMessage, type DeflateReply } from './deflate-worker.js';
import { GZIP_MEMBER_HEADER } from './format.js';
import type { Frame } from './types.js';

/**
 * gzip members made on the worker threads (see deflateWorkerMain). zlib's streams deflated on libuv's
 * threads, but made a zlib context, a 256 KiB output buffer and a member buffer for every 4 MiB part:
 * the ML stack's gzip build left 50 MB of that garbage on the main thread at its peak. Here the part
 * moves to a thread and back, the member comes in pieces that go back to the thread once written, and
 * each thread keeps its deflater: the main thread only hands memory round.
 */

/** Bytes of a member's piece: small enough that a member's last piece wastes little. */
const PIECE_SIZE = 256 << 10;

const DEFLATE_SERVICE: Service = {
  name: 'deflate',
  source: `(port) => (${deflateWorkerMain.toString()})(port, ${rawZlib.toString()}, ${JSON.stringify([...GZIP_MEMBER_HEADER])}, ${PIECE_SIZE})`,
};

interface Job {
  resolve: (frame: Frame) => void;
  reject: (error: Error) => void;
  /** The caller's part when its memory was copied rather than moved (it is given back as it is). */
  kept: Buffer | null;
}

/** The pool's line to one thread. */
class DeflateLine {
  readonly connection: Connection;
  readonly jobs = new Map<number, Job>();
  /**
   * Pieces this thread made, written since: they go back with its next job. Each thread gets back what
   * it made, so none makes more than its own members need at once, and none is dropped as garbage.
   */
  readonly spares: ArrayBuffer[] = [];

  constructor(connect: (onEnd: (error: Error | null) => void) => Connection, onReply: (line: DeflateLine, reply: DeflateReply) => void, onDead: (line: DeflateLine) => void) {
    let dead = false;
    this.connection = connect((error) => {
      if (dead) return;
      dead = true;
      onDead(this);
      const jobs = [...this.jobs.values()];
      this.jobs.clear();
      for (const job of jobs) job.reject(new Error(`gzip: ${(error ?? new Error('deflate thread stopped')).message}`));
    });
    this.connection.port.on('message', (reply: DeflateReply) => onReply(this, reply));
  }
}

export class DeflatePool {
  /** Lines by thread index. */
  readonly #lines: (DeflateLine | undefined)[] = [];
  #nextId = 1;

  constructor(
    readonly threads: number = availableParallelism(),
    private readonly on: Threads = sharedThreads(),
  ) {}

  /** A gzip member of `part`'s first `length` bytes (see Codec.frame). */
  member(part: Buffer, length: number, options: ZlibOptions): Promise<Frame> {
    // Only memory the part has to itself can move; a view of shared memory is copied.
    const own = part.byteOffset === 0 && part.buffer.byteLength === part.length && part.buffer instanceof ArrayBuffer;
    const memory = own ? (part.buffer as ArrayBuffer) : new Uint8Array(part.subarray(0, length)).buffer;
    const line = this.#pick();
    const id = this.#nextId++;
    const spares = line.spares.splice(0);
    // Output goes to the thread's pieces: zlib's chunk size has no say.
    const { chunkSize: _, ...deflate } = options;
    const message: DeflateMessage = { id, part: memory, length, options: deflate, spares };
    return new Promise((resolve, reject) => {
      line.jobs.set(id, { resolve, reject, kept: own ? null : part });
      line.connection.busy();
      line.connection.post(message, [memory, ...spares]);
    });
  }

  #reply = (line: DeflateLine, reply: DeflateReply): void => {
    const job = line.jobs.get(reply.id);
    if (!job) return;
    line.jobs.delete(reply.id);
    if (line.jobs.size === 0) line.connection.idle();
    const part = job.kept ?? Buffer.from(reply.part);
    if ('error' in reply) return job.reject(new Error(`gzip: ${reply.error}`));
    job.resolve({
      bytes: reply.pieces.map((piece, i) => Buffer.from(piece, 0, reply.lengths[i])),
      part,
      release: () => line.spares.push(...reply.pieces),
    });
  };

  /** The line with the fewest members in flight; the last threads first (the first ones unzip wheels). */
  #pick(): DeflateLine {
    const indices = Array.from({ length: this.threads }, (_, i) => this.threads - 1 - i);
    const idle = indices.find((i) => this.#lines[i]?.jobs.size === 0);
    if (idle !== undefined) return this.#lines[idle]!;
    const free = indices.find((i) => !this.#lines[i]);
    if (free !== undefined) return this.#start(free);
    return indices.map((i) => this.#lines[i]!).reduce((a, b) => (b.jobs.size < a.jobs.size ? b : a));
  }

  #start(index: number): DeflateLine {
    const line = new DeflateLine(
      (onEnd) => this.on.thread(index).connect(DEFLATE_SERVICE, onEnd),
      this.#reply,
      (dead) => {
        if (this.#lines[index] === dead) this.#lines[index] = undefined;
      },
    );
    this.#lines[index] = line;
    return line;
  }
}

let shared: DeflatePool | undefined;
/** The process's pool: one line per CPU, on the shared threads. */
export function deflatePool(): DeflatePool {
  shared ??= new DeflatePool();
  return shared;
}
