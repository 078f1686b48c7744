import { read, open, close, fstat } from 'node:fs';
import { createHash, type Hash } from 'node:crypto';

/**
 * Bytes kept free in front of each buffer. When a token (a NAR string, at most MAX_TOKEN bytes with its length
 * and padding) straddles two reads, its head is copied there so the token is contiguous in one buffer.
 */
const HEADROOM = 8192;
export const MAX_TOKEN = HEADROOM;

export const DEFAULT_CHUNK = 1 << 20;

/** Thrown when the data ends before a token or a file's contents do. `at` is the absolute offset where it ended. */
export class EndOfDataError extends Error {
  constructor(readonly at: number) {
    super(`unexpected end of file at byte ${at}`);
    this.name = 'EndOfDataError';
  }
}

/** Thrown when the OS fails to read the file. */
export class ReadFailedError extends Error {
  constructor(
    readonly at: number,
    readonly errno: NodeJS.ErrnoException,
  ) {
    super(`read failed at byte ${at}: ${errno.code ?? errno.message}`);
    this.name = 'ReadFailedError';
  }
}

function readAt(fd: number, buffer: Buffer, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    read(fd, buffer, HEADROOM, length, position, (err, bytesRead) => {
      if (err) reject(new ReadFailedError(position, err));
      else resolve(bytesRead);
    });
  });
}

export function openForReading(file: string): Promise<number> {
  return new Promise((resolve, reject) => open(file, 'r', (err, fd) => (err ? reject(err) : resolve(fd))));
}

export function closeFd(fd: number): Promise<void> {
  return new Promise((resolve) => close(fd, () => resolve()));
}

export function sizeOfFd(fd: number): Promise<number> {
  return new Promise((resolve, reject) => fstat(fd, (err, st) => (err ? reject(err) : resolve(st.size))));
}

const noop = (): void => {};

function wordsOf(buf: Buffer): Uint32Array {
  return new Uint32Array(buf.buffer, buf.byteOffset, buf.length >>> 2);
}

/**
 * Reads a byte range of a file in big chunks through two reused buffers: while the parser works on one,
 * the next chunk is read into the other (reads run on libuv's threadpool, so I/O overlaps parsing and hashing).
 *
 * Fields `buf`, `pos`, `end` are public so the parser's hot loop can read tokens without a call:
 * bytes `buf[pos..end)` are buffered and unread. A subarray of `buf` stays valid until the next call
 * to `need`, `skip` or `advance` — after that the buffer may be refilled.
 *
 * Optionally hashes (sha256) every byte consumed between `startHash` and `endHash`, in large slices.
 */
export class ChunkReader {
  buf: Buffer;
  /** `buf` as 32-bit words, for aligned compares: byte `i` of `buf` is in word `i >> 2`. */
  words: Uint32Array;
  pos = HEADROOM;
  end = HEADROOM;

  readonly #fd: number;
  readonly #chunkSize: number;
  readonly #limit: number;
  readonly #buffers: [Buffer, Buffer];
  readonly #words: [Uint32Array, Uint32Array];
  /** Index in #buffers of `buf`. */
  #current = 1;
  /** Absolute offset of the byte `buf[end]` would hold: everything before it has been read. */
  #endOffset: number;
  /** An in-flight read of the next chunk into the other buffer, and where it starts. */
  #prefetch: Promise<number> | null = null;
  #prefetchOffset = 0;
  #hash: Hash | null = null;
  #hashFrom = 0;
  #onRead: ((bytes: number) => void) | undefined;
  #endedAt: number | null = null;

  /**
   * @param fd an open file; the reader never closes it, but `close()` must be awaited before the fd is closed
   * @param start absolute offset of the first byte to read
   * @param limit absolute offset where the data ends (file size, or the end of one NAR)
   */
  constructor(fd: number, start: number, limit: number, opts: { chunkSize?: number; onRead?: (bytes: number) => void } = {}) {
    this.#fd = fd;
    this.#chunkSize = Math.max(opts.chunkSize ?? DEFAULT_CHUNK, 4096);
    this.#limit = limit;
    this.#endOffset = start;
    this.#onRead = opts.onRead;
    this.#chunkSize -= this.#chunkSize % 8;
    this.#buffers = [Buffer.allocUnsafeSlow(HEADROOM + this.#chunkSize), Buffer.allocUnsafeSlow(HEADROOM + this.#chunkSize)];
    this.#words = [wordsOf(this.#buffers[0]), wordsOf(this.#buffers[1])];
    this.buf = this.#buffers[1];
    this.words = this.#words[1];
  }

  /** Absolute offset of the next unread byte. */
  get position(): number {
    return this.#endOffset - (this.end - this.pos);
  }

  get limit(): number {
    return this.#limit;
  }

  /** Where the file turned out to end before the limit, once a read found that; else null. */
  get endedAt(): number | null {
    return this.#endedAt;
  }

  /** Absolute offset just past the buffered bytes. */
  get bufferedTo(): number {
    return this.#endOffset;
  }

  /** True when every byte up to the limit has been consumed. */
  get atLimit(): boolean {
    return this.position >= this.#limit;
  }

  /**
   * Makes at least `n` (≤ MAX_TOKEN) bytes available at `pos`. Returns undefined when they already are,
   * so hot callers can skip the await: `const p = r.need(8); if (p) await p;`.
   */
  need(n: number): Promise<void> | undefined {
    if (this.end - this.pos >= n) return undefined;
    return this.#needSlow(n);
  }

  async #needSlow(n: number): Promise<void> {
    if (n > MAX_TOKEN) throw new Error(`ChunkReader.need(${n}) exceeds MAX_TOKEN`);
    while (this.end - this.pos < n) {
      if (this.#endOffset >= this.#limit) throw new EndOfDataError(this.#limit);
      await this.advance();
    }
  }

  /**
   * Consumes `n` bytes without looking at them. When not hashing, bytes beyond the buffer are never read:
   * the reader just moves its file offset, so skipping a large file's contents costs nothing.
   */
  skip(n: number): Promise<void> | undefined {
    if (this.end - this.pos >= n) {
      this.pos += n;
      return undefined;
    }
    return this.#skipSlow(n);
  }

  async #skipSlow(n: number): Promise<void> {
    if (this.position + n > this.#limit) throw new EndOfDataError(this.#limit);
    if (this.#hash) {
      // Every byte must pass through the hash: consume buffer by buffer.
      while (this.end - this.pos < n) {
        n -= this.end - this.pos;
        this.pos = this.end;
        await this.advance();
      }
      this.pos += n;
      return;
    }
    const target = this.position + n;
    this.pos = this.end;
    this.#endOffset = target;
  }

  /**
   * Moves to the next chunk, keeping the unread bytes `buf[pos..end)` (at most MAX_TOKEN) in front of it.
   * Used by `need`, `skip` and by content readers when the buffer is exhausted.
   */
  async advance(): Promise<void> {
    const leftover = this.end - this.pos;
    if (leftover > HEADROOM) throw new Error('ChunkReader.advance with more than MAX_TOKEN unread bytes');
    const want = this.#endOffset;
    if (want >= this.#limit) throw new EndOfDataError(this.#limit);
    const nextIndex = this.#current === 0 ? 1 : 0;
    const next = this.#buffers[nextIndex];

    let base = want;
    let got = -1;
    if (this.#prefetch) {
      const prefetched = this.#prefetch;
      this.#prefetch = null;
      const n = await prefetched;
      if (this.#prefetchOffset <= want && want < this.#prefetchOffset + n) {
        base = this.#prefetchOffset;
        got = n;
      }
    }
    if (got < 0) {
      // Start reads at 8-aligned file offsets so that 8-aligned tokens land on aligned words of the buffer.
      base = want - (want % 8);
      got = await readAt(this.#fd, next, Math.min(this.#chunkSize, this.#limit - base), base);
      if (base + got <= want) got = 0;
    }
    // The file shrank since its size was taken (or the NAR's recorded range runs past its end).
    if (got === 0) {
      this.#endedAt = want;
      throw new EndOfDataError(want);
    }
    this.#onRead?.(got);

    const start = HEADROOM + (want - base);
    if (leftover > 0) this.buf.copy(next, start - leftover, this.pos, this.end);
    if (this.#hash) {
      // The leftover belongs to a token being read, so it is part of the hashed range: hash it here, not again.
      this.#hash.update(this.buf.subarray(this.#hashFrom, this.end));
      this.#hashFrom = start;
    }
    this.#current = nextIndex;
    this.buf = next;
    this.words = this.#words[nextIndex];
    this.pos = start - leftover;
    this.end = HEADROOM + got;
    this.#endOffset = base + got;
    this.#startPrefetch();
  }

  #startPrefetch(): void {
    if (this.#endOffset >= this.#limit) return;
    const other = this.#buffers[this.#current === 0 ? 1 : 0];
    this.#prefetchOffset = this.#endOffset;
    this.#prefetch = readAt(this.#fd, other, Math.min(this.#chunkSize, this.#limit - this.#endOffset), this.#endOffset);
    // A failed prefetch is reported when (if) its bytes are needed; until then it must not be "unhandled".
    this.#prefetch.catch(noop);
  }

  /** Starts hashing at the current position. */
  startHash(): void {
    this.#hash = createHash('sha256');
    this.#hashFrom = this.pos;
  }

  /** Stops hashing at the current position and returns the sha256 of the bytes in between, in hex. */
  endHash(): string {
    const hash = this.#hash;
    if (!hash) throw new Error('ChunkReader.endHash without startHash');
    hash.update(this.buf.subarray(this.#hashFrom, this.pos));
    this.#hash = null;
    return hash.digest('hex');
  }

  /** Waits for any read still in flight into this reader's buffers; call before closing the fd. */
  async close(): Promise<void> {
    const pending = this.#prefetch;
    this.#prefetch = null;
    if (pending) await pending.catch(noop);
  }
}
