#!/usr/bin/env node
// The layer writer alone (issue 5): every store path of a closure export into ONE gzip layer, so its
// parts compress in parallel as independent gzip members, and, for the ratio, the same tar as one
// single deflate stream (what a single-member writer would produce).
//   node scripts/bench/layer-writer.mjs <closure> <out dir> <jobs> [single]
// Prints {"tarBytes","blobBytes","digest"} as JSON. Needs dist/ (npm run build).
import { createDeflateRaw } from 'node:zlib';
import { loadClosure } from '../../dist/nix/closure.js';
import { Turns } from '../../dist/layer/codec.js';
import { writeLayerFile } from '../../dist/layer/writer.js';
import { storePathsSource } from '../../dist/layer/store-paths.js';
import { TarWriter } from '../../dist/tar/writer.js';

const [closureFile, outDir, jobs, mode] = process.argv.slice(2);
const closure = await loadClosure([closureFile], { tmpDir: outDir });
const source = storePathsSource([...closure.paths.values()]);

if (mode === 'single') {
  // One deflate stream over the same tar: the size a single-member blob would have.
  const deflate = createDeflateRaw({ level: 6 });
  let blobBytes = 18;
  deflate.on('data', (d) => (blobBytes += d.length));
  const ended = new Promise((r) => deflate.once('end', r));
  const buffers = [Buffer.alloc(4 << 20), Buffer.alloc(4 << 20)];
  const sink = {
    acquire: () => buffers.pop() ?? new Promise((r) => waiters.push(r)),
    submit: (chunk, length) => new Promise((r) => deflate.write(chunk.subarray(0, length), () => { (waiters.shift() ?? ((b) => buffers.push(b)))(chunk); r(); })),
  };
  const waiters = [];
  const tar = new TarWriter(sink, { mtime: 1 });
  await source(tar);
  await tar.finish();
  deflate.end();
  await ended;
  console.log(JSON.stringify({ tarBytes: tar.bytesWritten, blobBytes }));
} else {
  const blob = await writeLayerFile(source, { compression: 'gzip', gzipLevel: 6, mtime: 1 }, outDir, { turns: new Turns(Number(jobs)) });
  console.log(JSON.stringify({ tarBytes: blob.tarSize, blobBytes: blob.size, digest: blob.digest }));
}
