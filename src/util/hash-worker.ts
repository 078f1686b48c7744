import type { MessagePort } from 'node:worker_threads';
import type { BytePiece } from './pieces.js';

/** What the main thread asks of a hash worker: one job at a time. */
export interface WorkerJob {
  pieces: BytePiece[];
  hash: boolean;
  copyTo?: { fd: number; at: number };
  compareWith?: { fd: number; at: number };
}

/** What a hash worker answers. */
export type WorkerReply =
  | { type: 'progress'; bytes: number }
  | { type: 'done'; hex: string | null; same: boolean }
  | { type: 'error'; file: string; code: string; at: number };

/**
 * The hash service's whole program, run once per connection on a worker thread (see util/threads.ts).
 * It runs as source text, so it runs the same from dist/ and from the TypeScript sources under the test
 * runner, and it is type-checked here: it must use nothing from outside its own body but `require` and
 * Buffer. A thread runs other services too: a long job lets them in every YIELD_EVERY bytes.
 */
export function hashWorkerMain(port: MessagePort, readSize: number, progressEvery: number): void {
  const { createHash } = require('node:crypto') as typeof import('node:crypto');
  const fs = require('node:fs') as typeof import('node:fs');
  const buffer = Buffer.allocUnsafeSlow(readSize);
  const theirs = Buffer.allocUnsafeSlow(readSize);
  const reply = (message: WorkerReply) => port.postMessage(message);
  /** A comparison found a difference: the job ends early, not in error. */
  const STOP = Symbol('stop');
  type Failure = NodeJS.ErrnoException & { output?: boolean };

  const YIELD_EVERY = 16 << 20;
  const turn = () => new Promise<void>((resolve) => setImmediate(resolve));
  port.on('message', async ({ pieces, hash: wanted, copyTo, compareWith }: WorkerJob) => {
    let sinceTurn = 0;
    const hash = wanted ? createHash('sha256') : null;
    let unreported = 0;
    let out = 0;
    const take = (bytes: Buffer) => {
      hash?.update(bytes);
      if (copyTo) {
        try {
          for (let done = 0; done < bytes.length; ) done += fs.writeSync(copyTo.fd, bytes, done, bytes.length - done, copyTo.at + out + done);
        } catch (err) {
          (err as Failure).output = true;
          throw err;
        }
      }
      if (compareWith) {
        const other = theirs.subarray(0, bytes.length);
        let got = 0;
        while (got < other.length) {
          const n = fs.readSync(compareWith.fd, other, got, other.length - got, compareWith.at + out + got);
          if (n === 0) break;
          got += n;
        }
        if (got !== other.length || !other.equals(bytes)) throw STOP;
      }
      out += bytes.length;
    };
    try {
      for (const piece of pieces) {
        if ('bytes' in piece) {
          // Buffers arrive as Uint8Arrays after postMessage.
          take(Buffer.from(piece.bytes.buffer, piece.bytes.byteOffset, piece.bytes.byteLength));
          continue;
        }
        let fd: number | undefined;
        let at = piece.start;
        try {
          fd = fs.openSync(piece.file, 'r');
          const end = piece.start + piece.length;
          while (at < end) {
            const n = fs.readSync(fd, buffer, 0, Math.min(buffer.length, end - at), at);
            if (n === 0) throw Object.assign(new Error('short'), { code: 'SHORT' });
            take(n === buffer.length ? buffer : buffer.subarray(0, n));
            at += n;
            unreported += n;
            if ((sinceTurn += n) >= YIELD_EVERY) {
              sinceTurn = 0;
              await turn();
            }
            if (unreported >= progressEvery) {
              reply({ type: 'progress', bytes: unreported });
              unreported = 0;
            }
          }
        } catch (err) {
          if (err === STOP) throw err;
          const failure = err as Failure;
          // A failed write, not a failed read: reported as the output's (file '').
          if (failure.output) return reply({ type: 'error', file: '', code: failure.code ?? String(err), at: copyTo!.at + out });
          return reply({ type: 'error', file: piece.file, code: failure.code ?? String(err), at });
        } finally {
          if (fd !== undefined) fs.closeSync(fd);
        }
      }
    } catch (err) {
      if (err === STOP) return reply({ type: 'done', hex: null, same: false });
      return reply({ type: 'error', file: '', code: (err as Failure).code ?? String(err), at: 0 });
    }
    if (unreported > 0) reply({ type: 'progress', bytes: unreported });
    reply({ type: 'done', hex: hash ? hash.digest('hex') : null, same: true });
  });
}

/** What the main thread sends a stream hash worker: bytes in order (a buffer it may send back), or a request for the digest. */
export type StreamMessage = { type: 'update'; buffer: ArrayBuffer; length: number; back: boolean } | { type: 'digest' };

/** What a stream hash worker answers: a buffer hashed (sent back when asked), or the digest. */
export type StreamReply = { type: 'hashed'; buffer: ArrayBuffer | null } | { type: 'digest'; hex: string };

/**
 * The stream hash service's whole program: sha256 of the bytes it is sent, in order, so that a layer's
 * digest is computed on another core while the main thread tars. Like hashWorkerMain, it runs as
 * source text and uses nothing from outside its own body but `require`.
 */
export function streamHashWorkerMain(port: MessagePort): void {
  const { createHash } = require('node:crypto') as typeof import('node:crypto');
  let hash = createHash('sha256');
  port.on('message', (message: StreamMessage) => {
    if (message.type === 'digest') {
      const reply: StreamReply = { type: 'digest', hex: hash.digest('hex') };
      hash = createHash('sha256');
      port.postMessage(reply);
      return;
    }
    hash.update(new Uint8Array(message.buffer, 0, message.length));
    const reply: StreamReply = { type: 'hashed', buffer: message.back ? message.buffer : null };
    port.postMessage(reply, message.back ? [message.buffer] : []);
  });
}
