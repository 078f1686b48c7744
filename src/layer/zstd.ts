import { createRequire } from 'node:module';
import { Transform } from 'node:stream';
import type { MessagePort } from 'node:worker_threads';
import { Decompress } from 'fzstd';
import { FramePool, type FrameMessage, type FrameReply } from './frame-pool.js';
import type { Codec } from './types.js';

/**
 * zstd frames, made by one pinned build of zstd compiled to WebAssembly (`@bokuweb/zstd-wasm`, exact
 * version in package.json): the same bytes on every machine and every Node release, which neither
 * Node's own zstd (Node ≥ 22.15 only, and whichever libzstd it bundles) nor a native addon can promise.
 * Each frame is one `ZSTD_compress` call: single-threaded, at a fixed level, the content size in the
 * frame header, no checksum, no dictionary. WebAssembly runs on the thread that calls it, so frames
 * compress on a pool of worker threads, one WebAssembly instance each; which worker compresses a frame
 * never changes its bytes, and frame boundaries depend on FRAME_SIZE only.
 */

/** The zstd codec at `level`: frames compressed on the worker pool, a layer's head and end stored. */
export function zstdCodec(level: number): Codec {
  return {
    frame: (part, length) => zstdPool().frame(part, length, level),
    frameSync: storedZstdFrame,
  };
}

/**
 * A zstd frame that stores `bytes` as they are (raw blocks, or RLE blocks for a run of one byte), made
 * here on this thread: for the few small, fixed buffers a layer starts and ends with (the store-path head,
 * the end-of-archive blocks), which need no WebAssembly and never change with the zstd release.
 * Frame header: single segment, 4-byte content size (RFC 8878 §3.1.1.1).
 */
export function storedZstdFrame(bytes: Buffer): Buffer {
  if (bytes.length >= 2 ** 32) throw new Error('storedZstdFrame is for small buffers');
  const header = Buffer.alloc(9);
  header.writeUInt32LE(ZSTD_MAGIC, 0);
  header[4] = 0xa0; // Frame_Content_Size_flag 2 (4 bytes), Single_Segment_flag
  header.writeUInt32LE(bytes.length, 5);
  const parts: Buffer[] = [header];
  // A block holds at most 128 KiB (and no more than the window, which here is the content size).
  const BLOCK = 128 << 10;
  let offset = 0;
  do {
    const block = bytes.subarray(offset, offset + BLOCK);
    offset += block.length;
    const last = offset >= bytes.length ? 1 : 0;
    const rle = block.length > 1 && block.every((b) => b === block[0]);
    const blockHeader = Buffer.alloc(3);
    blockHeader.writeUIntLE(last | ((rle ? 1 : 0) << 1) | (block.length << 3), 0, 3);
    parts.push(blockHeader, rle ? block.subarray(0, 1) : block);
  } while (offset < bytes.length);
  return Buffer.concat(parts);
}

/**
 * The zstd service's program, on the shared threads: loads the WebAssembly once per thread, then
 * compresses each part it is sent into one frame (the part's memory goes back with it).
 */
function zstdWorkerMain(port: MessagePort, modulePath: string): void {
  const zstd = require(modulePath) as { init(): Promise<void>; compress(bytes: Uint8Array, level: number): Uint8Array };
  const ready = zstd.init();
  port.on('message', (job: FrameMessage<number>) => {
    ready
      .then(() => {
        const frame = zstd.compress(new Uint8Array(job.part, 0, job.length), job.settings);
        const reply: FrameReply = { id: job.id, part: job.part, pieces: [frame.buffer as ArrayBuffer], lengths: [frame.length] };
        port.postMessage(reply, [job.part, frame.buffer as ArrayBuffer]);
      })
      .catch((err: unknown) => port.postMessage({ id: job.id, part: job.part, error: String(err) } satisfies FrameReply, [job.part]));
  });
}

let zstdFrames: FramePool<number> | undefined;

/**
 * zstd frames on the shared threads, one WebAssembly instance per thread. How many frames are in
 * flight is bounded by the caller's turns (`--jobs`); the frame's bytes are the binding's own copy.
 */
function zstdPool(): FramePool<number> {
  if (!zstdFrames) {
    const modulePath = createRequire(import.meta.url).resolve('@bokuweb/zstd-wasm');
    zstdFrames = new FramePool('zstd', { name: 'zstd', source: `(port) => (${zstdWorkerMain.toString()})(port, ${JSON.stringify(modulePath)})` }, false);
  }
  return zstdFrames;
}

/** The first four bytes of a zstd frame, little-endian (RFC 8878 §3.1.1). */
export const ZSTD_MAGIC = 0xfd2fb528;

/**
 * A zstd decompressing stream. fzstd is plain JavaScript, on every supported Node (zlib's zstd
 * arrived in Node 22.15); any zstd stream, of one frame or many, whoever wrote it.
 */
export function zstdDecompressor(): Transform {
  let push: (chunk: Buffer) => void = () => {};
  const decompress = new Decompress((chunk) => push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)));
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      push = (out) => this.push(out);
      try {
        decompress.push(chunk);
        callback();
      } catch (err) {
        callback(err as Error);
      }
    },
    flush(callback) {
      push = (out) => this.push(out);
      try {
        decompress.push(new Uint8Array(0), true);
        callback();
      } catch (err) {
        callback(err as Error);
      }
    },
  });
}

export interface LayerScan {
  /** `/nix/store/<name>` of every store path the layer has entries under, sorted. */
  storePaths: string[];
  /** First path components of the layer's entries (`nix`, `bin`, `etc`), sorted. */
  topLevel: string[];
  uncompressedSize: number;
  /** `sha256:<hex>` of the uncompressed tar. */
  diffId: string;
}
