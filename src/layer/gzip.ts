import zlib from 'node:zlib';
import { acquireCompressionTurn, releaseCompressionTurn } from './jobs.js';
import { PART_SIZE } from './worker.js';

/** The fixed member header the layer writer uses: no name, mtime 0, XFL 0, OS 3 (Unix), whatever the platform. */
export const GZIP_MEMBER_HEADER = Buffer.from([0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0x03]);

/** Parts of one stream in flight at most (each holds a PART_SIZE buffer until deflated). */
const PARTS_IN_FLIGHT = 4;

/**
 * Gzip in the layer writer's format for a stream compressed on this thread's side: the input is cut every
 * PART_SIZE bytes, each part deflated alone on the thread pool (taking a turn from jobs.ts, so `--jobs`
 * bounds it together with the layer writer) and framed as its own gzip member; members are handed to
 * `emit` in input order. The same bytes in give exactly the bytes of a writeLayer blob of that tar.
 * For writers that compose layers from pieces (the layer cache's segments) and still want one huge
 * piece to use every core. Memory: at most PARTS_IN_FLIGHT parts and their outputs.
 */
export class GzipMembers {
  readonly #level: number;
  readonly #emit: (member: Buffer) => void;
  #part: Buffer | null = null;
  #used = 0;
  #spare: Buffer[] = [];
  #nextPart = 0;
  #nextEmit = 0;
  #done = new Map<number, Buffer>();
  #inFlight = 0;
  #slotWaiters: (() => void)[] = [];
  #failure: Error | null = null;
  #idle: (() => void)[] = [];

  /** `emit` receives whole members (header, deflate stream, CRC32, ISIZE) in order. */
  constructor(level: number, emit: (member: Buffer) => void) {
    this.#level = level;
    this.#emit = emit;
  }

  /** Takes the bytes (copied); resolves once there is room for more. */
  async write(bytes: Buffer): Promise<void> {
    let offset = 0;
    while (offset < bytes.length) {
      if (this.#failure) throw this.#failure;
      this.#part ??= this.#spare.pop() ?? Buffer.allocUnsafe(PART_SIZE);
      const copied = bytes.copy(this.#part, this.#used, offset);
      this.#used += copied;
      offset += copied;
      if (this.#used === PART_SIZE) await this.#dispatch();
    }
  }

  /** Sends what is left to be compressed (an empty stream gets one empty member); resolves once it is under way. */
  async flush(): Promise<void> {
    if (this.#used > 0 || this.#nextPart === 0) await this.#dispatch();
  }

  /** Compresses what is left and resolves once every member has been emitted. */
  async end(): Promise<void> {
    await this.flush();
    if (this.#inFlight > 0) await new Promise<void>((resolve) => this.#idle.push(resolve));
    if (this.#failure) throw this.#failure;
  }

  async #dispatch(): Promise<void> {
    const part = this.#part ?? Buffer.alloc(0);
    const length = this.#used;
    this.#part = null;
    this.#used = 0;
    while (this.#inFlight >= PARTS_IN_FLIGHT) await new Promise<void>((resolve) => this.#slotWaiters.push(resolve));
    const turn = acquireCompressionTurn();
    if (turn) await turn;
    if (this.#failure) {
      releaseCompressionTurn();
      throw this.#failure;
    }
    const seq = this.#nextPart++;
    this.#inFlight++;
    const input = part.subarray(0, length);
    const crc = zlib.crc32(input);
    zlib.deflateRaw(input, deflateOptions(this.#level), (err, deflated) => {
      releaseCompressionTurn();
      if (part.length === PART_SIZE) this.#spare.push(part);
      if (err) this.#failure ??= err;
      const trailer = Buffer.alloc(8);
      trailer.writeUInt32LE(crc >>> 0, 0);
      trailer.writeUInt32LE(length, 4);
      this.#done.set(seq, err ? Buffer.alloc(0) : Buffer.concat([GZIP_MEMBER_HEADER, deflated, trailer]));
      this.#emitInOrder();
    });
  }

  /**
   * Emits finished members in order. A part counts as in flight until its member is emitted, so members
   * waiting behind a slow earlier part stay bounded by PARTS_IN_FLIGHT.
   */
  #emitInOrder(): void {
    for (let member = this.#done.get(this.#nextEmit); member; member = this.#done.get(this.#nextEmit)) {
      this.#done.delete(this.#nextEmit++);
      try {
        if (!this.#failure) this.#emit(member);
      } catch (err) {
        this.#failure ??= err as Error;
      }
      this.#inFlight--;
      this.#slotWaiters.shift()?.();
    }
    if (this.#inFlight === 0) for (const done of this.#idle.splice(0)) done();
  }
}

/** The options the layer writer's worker deflates with (see layer-worker.ts): keep them the same. */
export function deflateOptions(level: number): zlib.ZlibOptions {
  return { level, windowBits: 15, memLevel: 8, strategy: zlib.constants.Z_DEFAULT_STRATEGY, chunkSize: 256 << 10 };
}
