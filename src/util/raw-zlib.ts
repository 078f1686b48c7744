import type { ZlibOptions } from 'node:zlib';

/** A raw (headerless) zlib stream that reads and writes memory its caller owns. */
export interface RawZlib {
  /**
   * Runs `input` through the stream into `out` until one runs out or the stream ends (`last`: no
   * input follows, so a deflater finishes its stream): [bytes read, bytes written]. Room left in `out`
   * after a `last` step means the stream has ended.
   */
  step(input: Uint8Array, out: Uint8Array, last: boolean): [number, number];
  /** Ready for another stream. Not after a failed step: zlib has closed the stream then. */
  reset(): void;
}

/**
 * A raw inflater or deflater that works in the caller's memory, through the handle Node's own
 * zlib.*Sync functions drive (a stream's `_handle.writeSync` and `_writeState`). The allocating
 * functions and zlib's streams make a zlib context per use and a new buffer for every piece of output:
 * over tens of thousands of wheel entries, or a gigabyte of frames, that churn held tens of MB until a
 * collection, and cost page faults and set-ups. Null where `zlib` has no such handle (the allocating
 * functions serve then). Self-contained: it runs in the worker threads. A failure is thrown as zlib
 * words it.
 */
export function rawZlib(zlib: typeof import('node:zlib'), kind: 'inflateRaw' | 'deflateRaw', options?: ZlibOptions): RawZlib | null {
  const stream = kind === 'inflateRaw' ? zlib.createInflateRaw(options) : zlib.createDeflateRaw(options);
  const { _handle: handle, _writeState: state } = stream as unknown as { _handle?: { writeSync?: unknown }; _writeState?: unknown };
  if (typeof handle?.writeSync !== 'function' || !(state instanceof Uint32Array)) return null;
  const writeSync = handle.writeSync as (flush: number, input: Uint8Array, inOff: number, inLen: number, out: Uint8Array, outOff: number, outLen: number) => void;
  const { Z_NO_FLUSH, Z_FINISH } = zlib.constants;
  // zlib reports a failure by destroying the stream; it is read from `errored` at once.
  stream.on('error', () => {});
  return {
    step(input, out, last) {
      writeSync.call(handle, last ? Z_FINISH : Z_NO_FLUSH, input, 0, input.length, out, 0, out.length);
      if (stream.destroyed) throw stream.errored ?? new Error(`${kind} failed`);
      return [input.length - state[1]!, out.length - state[0]!];
    },
    reset: () => stream.reset(),
  };
}
