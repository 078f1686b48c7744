/**
 * The deflate service's program: a part of a layer's tar made into a whole gzip member on a worker
 * thread, in memory that goes round. The gzip codec (codec.ts) runs it through a FramePool.
 */

import type { MessagePort } from 'node:worker_threads';
import type { ZlibOptions } from 'node:zlib';
import type { RawZlib, rawZlib } from '../util/raw-zlib.js';
import type { FrameMessage, FrameReply } from './frame-pool.js';

/**
 * The deflate service's whole program, run once per connection on a worker thread (see
 * util/threads.ts): uses nothing from outside its body but `require` and what it is given. Each job is
 * one gzip member (RFC 1952): `header`, the part deflated with Z_FINISH, its CRC-32 and length, in
 * pieces of `pieceSize` bytes. The deflater is kept and reset between members, and the pieces come back
 * from the main thread once written: deflating a layer of a gigabyte makes no garbage here.
 */
export function deflateWorkerMain(port: MessagePort, deflaterOf: typeof rawZlib, header: number[], pieceSize: number): void {
  const zlib = require('node:zlib') as typeof import('node:zlib');
  /** Pieces back from the main thread, for the next members: only those this thread made come back. */
  const spares: ArrayBuffer[] = [];
  /** Deflaters by their options (one per gzip level in use), reset after each member; null where Node has none. */
  const deflaters = new Map<string, RawZlib | null>();

  port.on('message', (job: FrameMessage<ZlibOptions>) => {
    for (const spare of job.spares) if (spare.byteLength === pieceSize) spares.push(spare);
    const pieces: Uint8Array[] = [];
    const lengths: number[] = [];
    let out = new Uint8Array(spares.pop() ?? new ArrayBuffer(pieceSize));
    let used = 0;
    const next = () => {
      pieces.push(out);
      lengths.push(used);
      out = new Uint8Array(spares.pop() ?? new ArrayBuffer(pieceSize));
      used = 0;
    };
    const put = (bytes: Uint8Array) => {
      for (let at = 0; at < bytes.length; ) {
        if (used === out.length) next();
        const n = Math.min(bytes.length - at, out.length - used);
        out.set(bytes.subarray(at, at + n), used);
        used += n;
        at += n;
      }
    };
    const key = JSON.stringify(job.settings);
    let deflater = deflaters.get(key);
    try {
      const input = new Uint8Array(job.part, 0, job.length);
      put(new Uint8Array(header));
      if (deflater === undefined) deflaters.set(key, (deflater = deflaterOf(zlib, 'deflateRaw', job.settings)));
      if (deflater) {
        // Z_FINISH from the first step: deflate returns with room left in `out` only once the member's data is whole.
        let rest = input;
        for (;;) {
          if (used === out.length) next();
          const [read, written] = deflater.step(rest, out.subarray(used), true);
          rest = rest.subarray(read);
          used += written;
          if (used < out.length) break;
        }
        deflater.reset();
      } else {
        put(zlib.deflateRawSync(input, job.settings));
      }
      const trailer = new Uint8Array(8);
      const view = new DataView(trailer.buffer);
      view.setUint32(0, zlib.crc32(input) >>> 0, true);
      view.setUint32(4, job.length % 0x100000000, true);
      put(trailer);
      pieces.push(out);
      lengths.push(used);
      const buffers = pieces.map((p) => p.buffer as ArrayBuffer);
      port.postMessage({ id: job.id, part: job.part, pieces: buffers, lengths } satisfies FrameReply, [job.part, ...buffers]);
    } catch (err) {
      // A deflater that failed is closed: the next member gets a new one.
      deflaters.delete(key);
      for (const piece of new Set([...pieces, out])) spares.push(piece.buffer as ArrayBuffer);
      port.postMessage({ id: job.id, part: job.part, error: (err as Error).message } satisfies FrameReply, [job.part]);
    }
  });
}
