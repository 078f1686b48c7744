import { Worker } from 'node:worker_threads';
import { streamHashWorkerMain, type StreamMessage, type StreamReply } from './hash-worker.js';

/** The worker's program as source text (see streamHashWorkerMain): self-contained, type-checked. */
const WORKER_SOURCE = `'use strict';\n(${streamHashWorkerMain.toString()})();\n`;

/** Buffers made to travel: their memory is moved to the worker and back instead of copied. */
const TRAVELLERS = new WeakSet<ArrayBuffer>();

/** A buffer of its own memory (not a slice of Node's pool), which a StreamHash moves rather than copies. */
export function travellingBuffer(size: number): Buffer {
  const buffer = Buffer.allocUnsafeSlow(size);
  TRAVELLERS.add(buffer.buffer);
  return buffer;
}

const idle: StreamHash[] = [];

/**
 * sha256 of a stream of bytes on a worker thread, in the order given: the main thread hands over a
 * buffer and gets it back once hashed (a travelling buffer moves without a copy; others are copied).
 * Workers are kept for reuse and unref'd while idle.
 */
export class StreamHash {
  readonly #worker: Worker;
  readonly #hashed: ((returned: Buffer | null) => void)[] = [];
  #digest: { resolve: (hex: string) => void; reject: (error: Error) => void } | null = null;
  #failure: Error | null = null;

  private constructor() {
    this.#worker = new Worker(WORKER_SOURCE, { eval: true });
    this.#worker.on('message', (reply: StreamReply) => {
      if (reply.type === 'digest') {
        const done = this.#digest;
        this.#digest = null;
        done?.resolve(reply.hex);
        return;
      }
      const returned = reply.buffer ? Buffer.from(reply.buffer) : null;
      if (reply.buffer) TRAVELLERS.add(reply.buffer);
      this.#hashed.shift()?.(returned);
    });
    const die = (error: Error) => {
      this.#failure ??= error;
      for (const done of this.#hashed.splice(0)) done(null);
      this.#digest?.reject(error);
      this.#digest = null;
    };
    this.#worker.on('error', die);
    this.#worker.on('exit', () => die(new Error('stream hash worker exited')));
  }

  /** A hasher for one stream: an idle one, or a new worker. */
  static take(): StreamHash {
    const hasher = idle.pop() ?? new StreamHash();
    hasher.#worker.ref();
    return hasher;
  }

  /**
   * Hashes `bytes` after those given before. A travelling buffer (and the memory it views) moves to the
   * worker: it must not be used until `done` gives back a buffer of the same memory.
   */
  update(bytes: Buffer, done: (returned: Buffer | null) => void): void {
    if (this.#failure) return done(null);
    const memory = bytes.buffer as ArrayBuffer;
    const travels = TRAVELLERS.has(memory) && bytes.byteOffset === 0;
    const buffer = travels ? memory : memory.slice(bytes.byteOffset, bytes.byteOffset + bytes.length);
    if (travels) TRAVELLERS.delete(memory);
    const message: StreamMessage = { type: 'update', buffer, length: bytes.length, back: travels };
    this.#hashed.push(done);
    this.#worker.postMessage(message, [buffer]);
  }

  /** `sha256:<hex>` of everything given; the hasher then goes back to the idle ones. */
  digest(): Promise<string> {
    if (this.#failure) return Promise.reject(this.#failure);
    return new Promise((resolve, reject) => {
      this.#digest = {
        resolve: (hex) => {
          this.#worker.unref();
          idle.push(this);
          resolve(`sha256:${hex}`);
        },
        reject,
      };
      const message: StreamMessage = { type: 'digest' };
      this.#worker.postMessage(message);
    });
  }
}
