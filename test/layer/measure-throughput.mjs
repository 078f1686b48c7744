#!/usr/bin/env node
// Measures the layer writer's throughput and peak memory on synthetic data (not part of the test suite).
//
//   node test/layers/measure-throughput.mjs [GiB=1] [work dir=/tmp]     (SKIP_GZIP=1 to skip part 4)
//
// 1. sha256 on one core, the yardstick.
// 2. writeLayer from memory (tar encoding + worker hash + file write), big files and many small ones.
// 3. End to end from a NAR on disk: readNar → tar → sha256 → file, --compression none (the build-image path).
// 4. gzip at levels 1 and 6 on a slice of the data.
// The layer modules are compiled into a scratch directory first, so this needs no build of the whole project.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

const repo = resolve(import.meta.dirname, '../..');
const gib = Number(process.argv[2] ?? 1);
const work = mkdtempSync(join(process.argv[3] ?? '/tmp', 'nix2oci-throughput-'));
const total = Math.round(gib * 1024 ** 3);

const compiled = join(work, 'compiled');
execFileSync(process.execPath, [
  join(repo, 'node_modules/typescript/bin/tsc'),
  '--outDir', compiled, '--rootDir', join(repo, 'src'), '--module', 'nodenext', '--moduleResolution', 'nodenext',
  '--target', 'es2022', '--strict', '--skipLibCheck', '--types', 'node', '--typeRoots', join(repo, 'node_modules/@types'),
  join(repo, 'src/layer/write.ts'), join(repo, 'src/layer/store-paths.ts'),
], { stdio: 'inherit' });
writeFileSync(join(compiled, 'package.json'), '{"type":"module"}');
const { writeLayer } = await import(join(compiled, 'layer/write.js'));
const { storePathsSource } = await import(join(compiled, 'layer/store-paths.js'));

const rate = (bytes, ms) => `${(bytes / 1e9 / (ms / 1000)).toFixed(2)} GB/s`;
const rss = () => `${Math.round(process.resourceUsage().maxRSS / 1024)} MB peak RSS`;

/** CPU seconds per thread of this process (Linux), so a shared, busy machine still gives a fair bound. */
function threadCpu() {
  const out = new Map();
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(tid, { name: stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')), seconds: (Number(fields[11]) + Number(fields[12])) / 100 });
    } catch {}
  }
  return out;
}

function timed(label, bytes, fn) {
  return (async () => {
    const before = threadCpu();
    const start = performance.now();
    const result = await fn();
    const ms = performance.now() - start;
    const busy = [...threadCpu()]
      .map(([tid, t]) => ({ name: `${t.name}#${tid}`, seconds: t.seconds - (before.get(tid)?.seconds ?? 0) }))
      .filter((t) => t.seconds > 0.05)
      .sort((a, b) => b.seconds - a.seconds);
    const busiest = busy[0]?.seconds ?? ms / 1000;
    console.log(`${label.padEnd(58)} ${(bytes / 2 ** 20).toFixed(0).padStart(6)} MiB in ${(ms / 1000).toFixed(2)} s: ${rate(bytes, ms)} wall, ` +
      `${rate(bytes, busiest * 1000)} by busiest thread CPU, ${rss()}`);
    console.log(`    thread CPU s: ${busy.map((t) => `${t.name} ${t.seconds.toFixed(2)}`).join(', ')}`);
    return result;
  })();
}

function noise(size, seed) {
  const out = Buffer.alloc(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i + 4 <= size; i += 4) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    out.writeUInt32LE(x >>> 0, i);
  }
  return out;
}

// 1. The yardstick.
const mib = noise(1 << 20, 1);
await timed('sha256, one core, 1 MiB updates', 1 << 30, () => {
  const h = createHash('sha256');
  for (let i = 0; i < 1024; i++) h.update(mib);
  h.digest();
});

// 2. From memory.
const layers = join(work, 'layers');
mkdirSync(layers);
const bigFiles = Math.max(1, Math.round(total / (4 << 20)));
const four = noise(4 << 20, 2);
await timed('writeLayer none, 4 MiB files from memory', bigFiles * four.length, () =>
  writeLayer(async (sink) => {
    for (let i = 0; i < bigFiles; i++) await sink.add({ type: 'file', name: `f${i}`, mode: 0o444, size: four.length, body: four });
  }, { compression: 'none', dir: layers, mtime: 1 }));
rmSync(layers, { recursive: true }); mkdirSync(layers);
const small = noise(8 << 10, 3);
const smallFiles = Math.round(total / 4 / small.length);
await timed(`writeLayer none, ${smallFiles} files of 8 KiB from memory`, smallFiles * small.length, () =>
  writeLayer(async (sink) => {
    for (let d = 0; d * 1000 < smallFiles; d++) {
      await sink.add({ type: 'directory', name: `d${d}`, mode: 0o555 });
      for (let i = d * 1000; i < Math.min(smallFiles, (d + 1) * 1000); i++) {
        await sink.add({ type: 'file', name: `d${d}/file-${i}.py`, mode: 0o444, size: small.length, body: small });
      }
    }
  }, { compression: 'none', dir: layers, mtime: 1 }));
rmSync(layers, { recursive: true }); mkdirSync(layers);

// 3. End to end from a NAR: a tree of big and small files, serialised by nix-store --dump when there, else by hand.
const tree = join(work, 'tree');
mkdirSync(join(tree, 'lib'), { recursive: true });
mkdirSync(join(tree, 'share'), { recursive: true });
const bigCount = Math.round((total * 0.9) / (16 << 20));
for (let i = 0; i < bigCount; i++) writeFileSync(join(tree, 'lib', `blob-${String(i).padStart(4, '0')}.so`), noise(16 << 20, 10 + i));
const smallCount = Math.round((total * 0.1) / (12 << 10));
for (let i = 0; i < smallCount; i++) writeFileSync(join(tree, 'share', `doc-${String(i).padStart(6, '0')}.txt`), noise(12 << 10, 100000 + i));
const nar = join(work, 'tree.nar');
const fd = openSync(nar, 'w');
execFileSync('nix-store', ['--dump', tree], { stdio: ['ignore', fd, 'inherit'], maxBuffer: 1 << 20 });
closeSync(fd);
rmSync(tree, { recursive: true });
const narSize = statSync(nar).size;
const info = {
  path: '/nix/store/00000000000000000000000000000000-throughput',
  references: [], deriver: null, narHash: '0'.repeat(64), narSize, source: { file: nar, offset: 0 },
};
execFileSync('cat', [nar], { stdio: ['ignore', 'ignore', 'inherit'] }); // warm the page cache, as after indexing
const blob = await timed(`readNar → writeLayer none (${bigCount} × 16 MiB, ${smallCount} × 12 KiB)`, narSize, () =>
  writeLayer(storePathsSource([info]), { compression: 'none', dir: layers, mtime: 1 }));
console.log(`  layer ${blob.size} bytes, NAR ${narSize} bytes`);
rmSync(layers, { recursive: true }); mkdirSync(layers);

// 4. Gzip on a slice.
const slice = Math.min(bigFiles, 64);
for (const gzipLevel of process.env.SKIP_GZIP ? [] : [1, 6]) {
  await timed(`writeLayer gzip -${gzipLevel}, random 4 MiB files from memory`, slice * four.length, () =>
    writeLayer(async (sink) => {
      for (let i = 0; i < slice; i++) await sink.add({ type: 'file', name: `f${i}`, mode: 0o444, size: four.length, body: four });
    }, { compression: 'gzip', dir: layers, mtime: 1, gzipLevel }));
  const text = Buffer.from(Array.from({ length: 60000 }, (_, i) => `/nix/store/${(i * 2654435761 >>> 0).toString(36)}-python3-3.11/lib/mod_${i % 300}.py\n`).join(''));
  const count = Math.round((256 << 20) / text.length);
  await timed(`writeLayer gzip -${gzipLevel}, text-like files from memory`, count * text.length, () =>
    writeLayer(async (sink) => {
      for (let i = 0; i < count; i++) await sink.add({ type: 'file', name: `t${i}`, mode: 0o444, size: text.length, body: text });
    }, { compression: 'gzip', dir: layers, mtime: 1, gzipLevel }));
}

rmSync(work, { recursive: true });
