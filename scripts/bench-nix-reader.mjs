#!/usr/bin/env node
// Speed of the Nix export reader on a synthetic export (big files + many small files).
// Usage: node scripts/bench-nix-reader.mjs [--mb 1024] [--dist dist] [--keep FILE]
// Writes the export to a temp file (deleted afterwards unless --keep), reads it once to warm the page cache,
// then times indexExport, readNar over every path (contents consumed) and listNar.
import { openSync, writeSync, closeSync, readFileSync, unlinkSync, existsSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: { mb: { type: 'string', default: '1024' }, dist: { type: 'string', default: 'dist' }, keep: { type: 'string' } },
});
const dist = resolve(args.dist);
const { indexExport } = await import(pathToFileURL(join(dist, 'nix/export.js')).href);
const { readNar, listNar } = await import(pathToFileURL(join(dist, 'nix/nar.js')).href);

const totalMb = Number(args.mb);
const file = args.keep ?? join(tmpdir(), `bench-nix-reader-${process.pid}.closure`);

class Writer {
  constructor(fd) {
    this.fd = fd;
    this.buf = Buffer.alloc(1 << 20);
    this.used = 0;
  }
  bytes(b) {
    if (this.used + b.length > this.buf.length) this.flush();
    if (b.length > this.buf.length) return void writeSync(this.fd, b);
    b.copy(this.buf, this.used);
    this.used += b.length;
  }
  u64(n) {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(n));
    this.bytes(b);
  }
  str(s) {
    const b = Buffer.isBuffer(s) ? s : Buffer.from(s);
    this.u64(b.length);
    this.bytes(b);
    if (b.length % 8) this.bytes(Buffer.alloc(8 - (b.length % 8)));
  }
  flush() {
    if (this.used) writeSync(this.fd, this.buf, 0, this.used);
    this.used = 0;
  }
}

const block = Buffer.alloc(1 << 20);
for (let i = 0; i < block.length; i++) block[i] = (i * 2654435761) >>> 24;

function regular(w, size) {
  for (const t of ['(', 'type', 'regular', 'contents']) w.str(t);
  w.u64(size);
  for (let left = size; left > 0; left -= block.length) w.bytes(left >= block.length ? block : block.subarray(0, left));
  if (size % 8) w.bytes(Buffer.alloc(8 - (size % 8)));
  w.str(')');
}

function dir(w, entries) {
  for (const t of ['(', 'type', 'directory']) w.str(t);
  for (const [name, write] of entries.sort((a, b) => Buffer.compare(Buffer.from(a[0]), Buffer.from(b[0])))) {
    for (const t of ['entry', '(', 'name']) w.str(t);
    w.str(name);
    w.str('node');
    write();
    w.str(')');
  }
  w.str(')');
}

function storePath(w, nar, path, refs) {
  w.u64(1);
  w.str('nix-archive-1');
  nar();
  w.u64(0x4558494e);
  w.str(path);
  w.u64(refs.length);
  for (const r of refs) w.str(r);
  w.str('');
  w.u64(0);
}

if (!existsSync(file)) {
  const w = new Writer(openSync(file, 'w'));
  const bigMb = Math.floor(totalMb * 0.75);
  const big = '/nix/store/' + 'b'.repeat(32) + '-big';
  const small = '/nix/store/' + 's'.repeat(32) + '-small';
  storePath(w, () => dir(w, Array.from({ length: 4 }, (_, i) => [`blob${i}`, () => regular(w, (bigMb / 4) << 20)])), big, []);
  const smallFiles = Math.floor(((totalMb - bigMb) << 20) / 10240);
  const perDir = 100;
  storePath(
    w,
    () =>
      dir(
        w,
        Array.from({ length: Math.ceil(smallFiles / perDir) }, (_, d) => [
          `d${d}`,
          () => dir(w, Array.from({ length: perDir }, (_, f) => [`file-${f}.py`, () => regular(w, 10240 + (f % 7))])),
        ]),
      ),
    small,
    [big],
  );
  // Per-entry cost: 100k files of ~100 bytes (a site-packages tree is like this, only bigger).
  storePath(
    w,
    () =>
      dir(
        w,
        Array.from({ length: 1000 }, (_, d) => [
          `pkg${d}`,
          () => dir(w, Array.from({ length: 100 }, (_, f) => [`module_${f}.py`, () => regular(w, 64 + f)])),
        ]),
      ),
    '/nix/store/' + 'x'.repeat(32) + '-tiny',
    [],
  );
  w.u64(0);
  w.flush();
  closeSync(w.fd);
}
const size = statSync(file).size;
readFileSync(file).length; // warm the page cache (the file is at most a few GB)

/** CPU seconds of the main thread (the parser, hashing) from /proc; reads run on other threads. */
function mainThreadCpu() {
  const fields = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime + stime, in clock ticks of 10 ms
}

// The machine may be shared: wall time says little then, CPU time (main thread: the bottleneck) says more.
async function time(name, fn, bytes) {
  const t = process.hrtime.bigint();
  const cpu0 = process.cpuUsage();
  const main0 = mainThreadCpu();
  const out = await fn();
  const s = Number(process.hrtime.bigint() - t) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  const all = (cpu.user + cpu.system) / 1e6;
  const main = mainThreadCpu() - main0;
  const rate = (secs) => (bytes && secs > 0 ? `${(bytes / secs / 1e9).toFixed(2)} GB/s` : '-');
  console.log(
    `${name.padEnd(20)} wall ${s.toFixed(3)} s (${rate(s)})  cpu ${all.toFixed(2)} s  main thread ${main.toFixed(2)} s (${rate(main)})`,
  );
  return out;
}

const rss0 = process.memoryUsage().rss;
for (let round = 0; round < 2; round++) {
  const infos = await time('indexExport', () => indexExport(file), size);
  const visitor = {
    directory() {},
    symlink() {},
    async regular(_node, contents) {
      for await (const chunk of contents) if (chunk.length === 0) throw new Error('empty chunk');
    },
  };
  for (const info of infos) await time(`readNar ${info.path.slice(44)}`, () => readNar(info, visitor), info.narSize);
  for (const info of infos) await time(`listNar ${info.path.slice(44)}`, () => listNar(info), info.narSize);
}
console.log(`file ${(size / 1e9).toFixed(2)} GB, rss growth ${((process.memoryUsage().rss - rss0) / 1e6).toFixed(1)} MB`);
if (!args.keep) unlinkSync(file);
