import { createHash } from 'node:crypto';
import { Readable, Transform } from 'node:stream';
import tar from 'tar-stream';
import { UserError } from '../util/errors.js';
import { layerDecompressor } from './diff-id.js';
import { ZSTD_MAGIC } from './zstd.js';

export interface LayerScan {
  /** `/nix/store/<name>` of every store path the layer has entries under, sorted. */
  storePaths: string[];
  /** First path components of the layer's entries (`nix`, `bin`, `etc`), sorted. */
  topLevel: string[];
  uncompressedSize: number;
  /** `sha256:<hex>` of the uncompressed tar. */
  diffId: string;
}

/**
 * Reads a layer blob once, as a stream: decompresses it if it is gzip or zstd (recognised by its magic bytes,
 * whatever the media type says), and lists what it holds from the tar headers. Bodies are skipped.
 */
export async function scanLayer(blob: Readable, what: string): Promise<LayerScan> {
  const iterator = blob[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  const first = await iterator.next();
  const head: Buffer = first.done ? Buffer.alloc(0) : first.value;
  const zstd = head.length >= 4 && head.readUInt32LE(0) === ZSTD_MAGIC;
  const gzip = head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b;
  const source = Readable.from(
    (async function* () {
      if (head.length > 0) yield head;
      while (true) {
        const next = await iterator.next();
        if (next.done) return;
        yield next.value;
      }
    })(),
  );

  const hash = createHash('sha256');
  let uncompressedSize = 0;
  const measure = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      hash.update(chunk);
      uncompressedSize += chunk.length;
      callback(null, chunk);
    },
  });
  const storePaths = new Set<string>();
  const topLevel = new Set<string>();
  const extract = tar.extract();
  extract.on('entry', (header, body, next) => {
    const name = header.name.replace(/^(\.?\/)+/, '');
    const store = /^nix\/store\/([^/]+)/.exec(name);
    if (store) storePaths.add(`/nix/store/${store[1]}`);
    const top = name.split('/')[0];
    if (top) topLevel.add(top);
    body.on('end', () => next());
    body.resume();
  });

  await new Promise<void>((resolve, reject) => {
    const fail = (err: Error) => {
      source.destroy();
      reject(err instanceof UserError ? err : new UserError(`${what} is not a readable layer: ${err.message}`, { cause: err }));
    };
    const stages: NodeJS.ReadWriteStream[] = gzip ? [layerDecompressor('gzip'), measure] : zstd ? [layerDecompressor('zstd'), measure] : [measure];
    let upstream: NodeJS.ReadableStream = source;
    source.on('error', fail);
    for (const stage of stages) {
      stage.on('error', fail);
      upstream = upstream.pipe(stage);
    }
    extract.on('error', fail);
    extract.on('finish', () => resolve());
    upstream.pipe(extract as unknown as NodeJS.WritableStream);
  });
  // tar-stream stops at the end-of-archive blocks; keep counting what follows (padding is part of the diffID).
  await new Promise<void>((resolve) => (measure.readableEnded ? resolve() : measure.once('end', () => resolve())));

  return {
    storePaths: [...storePaths].sort(),
    topLevel: [...topLevel].sort(),
    uncompressedSize,
    diffId: `sha256:${hash.digest('hex')}`,
  };
}
