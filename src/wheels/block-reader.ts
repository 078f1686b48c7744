/**
 * Positional reads of a file through a small cache of aligned blocks. A wheel is read as thousands of
 * tiny pieces — central directory records, 30-byte local headers, small compressed files lying next to
 * each other — and one system call per piece costs more than the bytes (a threadpool round trip each).
 * Reading a whole block at a time serves most pieces from memory; large reads bypass the cache.
 * Memory is bounded: BLOCK_COUNT blocks of BLOCK_SIZE bytes.
 */
import type { FileHandle } from 'node:fs/promises';

const BLOCK_SIZE = 1 << 20;
const BLOCK_COUNT = 4;

export class BlockReader {
  /** Block index → its bytes (shorter at the end of the file), most recently used last. */
  readonly #blocks = new Map<number, Promise<Buffer>>();

  constructor(
    private readonly handle: FileHandle,
    readonly size: number,
  ) {}

  /** Exactly `length` bytes at `position`; a short file is an error. */
  async read(position: number, length: number): Promise<Buffer> {
    if (position < 0 || length < 0 || position + length > this.size) {
      throw new Error(`read of ${length} bytes at byte ${position} is past the end of the file (${this.size} bytes)`);
    }
    if (length > BLOCK_SIZE) return this.#readDirect(position, length);
    const first = Math.floor(position / BLOCK_SIZE);
    const last = Math.floor((position + length - 1) / BLOCK_SIZE);
    if (length === 0) return Buffer.alloc(0);
    if (first === last) {
      const block = await this.#block(first);
      const start = position - first * BLOCK_SIZE;
      return block.subarray(start, start + length);
    }
    const [a, b] = await Promise.all([this.#block(first), this.#block(last)]);
    const start = position - first * BLOCK_SIZE;
    return Buffer.concat([a.subarray(start), b.subarray(0, length - (a.length - start))]);
  }

  /** Chunks of at most BLOCK_SIZE covering [position, position + length). */
  async *chunks(position: number, length: number): AsyncGenerator<Buffer> {
    const end = position + length;
    while (position < end) {
      // Align to blocks so a later small read of the same region hits the cache.
      const n = Math.min(end - position, BLOCK_SIZE - (position % BLOCK_SIZE));
      const bytes = await this.read(position, n);
      position += n;
      // Read ahead: the next block comes from disk while this one is inflated and hashed.
      if (position < end) this.#block(Math.floor(position / BLOCK_SIZE)).catch(() => {});
      yield bytes;
    }
  }

  #block(index: number): Promise<Buffer> {
    let block = this.#blocks.get(index);
    if (block) {
      this.#blocks.delete(index);
    } else {
      const start = index * BLOCK_SIZE;
      const reading = this.#readDirect(start, Math.min(BLOCK_SIZE, this.size - start));
      block = reading;
      if (this.#blocks.size >= BLOCK_COUNT) {
        const oldest = this.#blocks.keys().next().value!;
        this.#blocks.delete(oldest);
      }
      // A failed read must not stay cached.
      reading.catch(() => this.#blocks.delete(index));
    }
    this.#blocks.set(index, block);
    return block;
  }

  async #readDirect(position: number, length: number): Promise<Buffer> {
    const buffer = Buffer.allocUnsafe(length);
    let filled = 0;
    while (filled < length) {
      const { bytesRead } = await this.handle.read(buffer, filled, length - filled, position + filled);
      if (bytesRead === 0) throw new Error(`unexpected end of file at byte ${position + filled}`);
      filled += bytesRead;
    }
    return buffer;
  }
}
