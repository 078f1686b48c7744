import { availableParallelism } from 'node:os';
import { sharedThreads, type Connection, type Service, type Threads } from '../util/threads.js';
import type { Frame } from './types.js';

/**
 * Frames compressed on the shared worker threads, for every codec: a part's memory moves to a thread
 * and back (nothing is copied), and the frame comes back as pieces. The codec is a service (gzip's in
 * deflate-worker.ts, zstd's in zstd.ts) that answers each FrameMessage with a FrameReply. Where the
 * service fills pieces it was given (`recycle`), each thread gets back the pieces it made once they
 * are written, so none makes more than its own frames need at once and none is dropped as garbage.
 * The last threads are used first: the first ones unzip wheels.
 */

/** What a compressing thread is asked: one frame of `part`'s first `length` bytes. */
export interface FrameMessage<Settings> {
  id: number;
  /** The part's memory, moved to the thread and back with the reply. */
  part: ArrayBuffer;
  length: number;
  /** The codec's settings (zlib's options, zstd's level). */
  settings: Settings;
  /** Pieces of earlier frames, written since, back to the thread that made them. */
  spares: ArrayBuffer[];
}

/** What a compressing thread answers: the frame as pieces (their first `lengths[i]` bytes, in order), and the part back. */
export type FrameReply =
  | { id: number; part: ArrayBuffer; pieces: ArrayBuffer[]; lengths: number[] }
  | { id: number; part: ArrayBuffer; error: string };

interface Job {
  resolve: (frame: Frame) => void;
  reject: (error: Error) => void;
  /** The caller's part when its memory was copied rather than moved (it is given back as it is). */
  kept: Buffer | null;
}

/** The pool's line to one thread. */
class Line {
  readonly connection: Connection;
  readonly jobs = new Map<number, Job>();
  /** Pieces this thread made, written since: they go back with its next job. */
  readonly spares: ArrayBuffer[] = [];

  constructor(
    name: string,
    connect: (onEnd: (error: Error | null) => void) => Connection,
    onReply: (line: Line, reply: FrameReply) => void,
    onDead: (line: Line) => void,
  ) {
    let dead = false;
    this.connection = connect((error) => {
      if (dead) return;
      dead = true;
      onDead(this);
      const jobs = [...this.jobs.values()];
      this.jobs.clear();
      for (const job of jobs) job.reject(new Error(`${name}: ${(error ?? new Error('the compressing thread stopped')).message}`));
    });
    this.connection.port.on('message', (reply: FrameReply) => onReply(this, reply));
  }
}

export class FramePool<Settings> {
  /** Lines by thread index. */
  readonly #lines: (Line | undefined)[] = [];
  #nextId = 1;

  constructor(
    /** The codec's name, for errors (`gzip: …`). */
    readonly name: string,
    private readonly service: Service,
    /** Whether the service fills pieces it is given back (else written pieces are left to the collector). */
    private readonly recycle: boolean,
    readonly threads: number = availableParallelism(),
    private readonly on: Threads = sharedThreads(),
  ) {}

  /** A frame of `part`'s first `length` bytes (see Codec.frame). */
  frame(part: Buffer, length: number, settings: Settings): Promise<Frame> {
    // Only memory the part has to itself can move; a view of shared memory is copied.
    const own = part.byteOffset === 0 && part.buffer.byteLength === part.length && part.buffer instanceof ArrayBuffer;
    const memory = own ? (part.buffer as ArrayBuffer) : new Uint8Array(part.subarray(0, length)).buffer;
    const line = this.#pick();
    const id = this.#nextId++;
    const spares = line.spares.splice(0);
    const message: FrameMessage<Settings> = { id, part: memory, length, settings, spares };
    return new Promise((resolve, reject) => {
      line.jobs.set(id, { resolve, reject, kept: own ? null : part });
      line.connection.busy();
      line.connection.post(message, [memory, ...spares]);
    });
  }

  #reply = (line: Line, reply: FrameReply): void => {
    const job = line.jobs.get(reply.id);
    if (!job) return;
    line.jobs.delete(reply.id);
    if (line.jobs.size === 0) line.connection.idle();
    const part = job.kept ?? Buffer.from(reply.part);
    if ('error' in reply) return job.reject(new Error(`${this.name}: ${reply.error}`));
    job.resolve({
      bytes: reply.pieces.map((piece, i) => Buffer.from(piece, 0, reply.lengths[i])),
      part,
      release: this.recycle ? () => line.spares.push(...reply.pieces) : () => {},
    });
  };

  /** An idle line, else a new one while there is room, else the line with the fewest frames in flight. */
  #pick(): Line {
    const indices = Array.from({ length: this.threads }, (_, i) => this.threads - 1 - i);
    const idle = indices.find((i) => this.#lines[i]?.jobs.size === 0);
    if (idle !== undefined) return this.#lines[idle]!;
    const free = indices.find((i) => !this.#lines[i]);
    if (free !== undefined) return this.#start(free);
    return indices.map((i) => this.#lines[i]!).reduce((a, b) => (b.jobs.size < a.jobs.size ? b : a));
  }

  #start(index: number): Line {
    const line = new Line(
      this.name,
      (onEnd) => this.on.thread(index).connect(this.service, onEnd),
      this.#reply,
      (dead) => {
        if (this.#lines[index] === dead) this.#lines[index] = undefined;
      },
    );
    this.#lines[index] = line;
    return line;
  }
}
