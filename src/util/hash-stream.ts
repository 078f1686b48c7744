import { streamHashWorkerMain, type StreamMessage, type StreamReply } from './hash-worker.js';
import { sharedThreads, type Connection, type Service } from './threads.js';

/** Buffers made to travel: their memory is moved to the worker and back instead of copied. */
const TRAVELLERS = new WeakSet<ArrayBuffer>();

/** A buffer of its own memory (not a slice of Node's pool), which a StreamHash moves rather than copies. */
export function travellingBuffer(size: number): Buffer {
  const buffer = Buffer.allocUnsafeSlow(size);
  TRAVELLERS.add(buffer.buffer);
  return buffer;
}

const idle: StreamHash[] = [];

/** The stream hash service (see streamHashWorkerMain), as the threads run it. */
const STREAM_HASH_SERVICE: Service = { name: 'stream-hash', source: `(port) => (${streamHashWorkerMain.toString()})(port)` };

/**
 * sha256 of a stream of bytes on a worker thread, in the order given: the main thread hands over a
 * buffer and gets it back once hashed (a travelling buffer moves without a copy; others are copied).
 * Hashers are kept for reuse, each on the thread that was least busy when it was made.
 */
export class StreamHash {
  readonly #connection: Connection;
  readonly #hashed: ((returned: Buffer | null) => void)[] = [];
  #digest: { resolve: (hex: string) => void; reject: (error: Error) => void } | null = null;
  #failure: Error | null = null;

  private constructor() {
    this.#connection = sharedThreads().leastBusy().connect(STREAM_HASH_SERVICE, (error) => {
      const i = idle.indexOf(this);
      if (i >= 0) idle.splice(i, 1);
      this.#failure ??= error ?? new Error('stream hash thread stopped');
      for (const done of this.#hashed.splice(0)) done(null);
      this.#digest?.reject(this.#failure);
      this.#digest = null;
    });
    this.#connection.port.on('message', (reply: StreamReply) => {
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
  }

  /** A hasher for one stream: an idle one, or a new one. */
  static take(): StreamHash {
    const hasher = idle.pop() ?? new StreamHash();
    hasher.#connection.busy();
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
    this.#connection.post(message, [buffer]);
  }

  /** `sha256:<hex>` of everything given; the hasher then goes back to the idle ones. */
  digest(): Promise<string> {
    if (this.#failure) return Promise.reject(this.#failure);
    return new Promise((resolve, reject) => {
      this.#digest = {
        resolve: (hex) => {
          this.#connection.idle();
          idle.push(this);
          resolve(`sha256:${hex}`);
        },
        reject,
      };
      const message: StreamMessage = { type: 'digest' };
      this.#connection.post(message);
    });
  }
}
