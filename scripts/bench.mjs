#!/usr/bin/env node
// npm run bench: build-image on a synthetic closure of more than 1 GB made with real Nix, next to this
// machine's own limits measured in the same run (sha256 and gzip -6 on one core), with peak memory.
//
//   npm run bench                    full run (first run builds the closure with Nix: a few minutes)
//   BENCH_SMALL=1 npm run bench      a quick run on a ~120 MB closure
//
// Everything lands in .bench/ (ignored by git). Ratios, not seconds, are the result: a shared machine
// is slower or faster from run to run, and the limits measured alongside move with it.
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync, renameSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createGzip } from 'node:zlib';
import { pipeline } from 'node:stream/promises';
import { Writable } from 'node:stream';

const repo = resolve(import.meta.dirname, '..');
const work = join(repo, '.bench');
const cli = join(repo, 'dist/cli/main.js');
const small = process.env.BENCH_SMALL === '1';
mkdirSync(work, { recursive: true });

const MB = 1e6;
const results = [];
const report = (name, value, target, ok) => {
  results.push({ name, value, target, ok });
  console.log(`${ok === undefined ? '  ' : ok ? 'ok' : '!!'} ${name.padEnd(54)} ${value.padStart(16)}   ${target ?? ''}`);
};

// --- the closure -------------------------------------------------------------------------------
function makeClosure(name, args) {
  const file = join(work, `${name}.closure`);
  const rootFile = join(work, `${name}.root`);
  const root = execFileSync('nix-build', ['--no-out-link', '--quiet', '--max-jobs', '2', join(repo, 'scripts/bench/closure.nix'), ...args], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  }).trim();
  if (!existsSync(file) || !existsSync(rootFile) || readFileSync(rootFile, 'utf8') !== root) {
    const paths = execFileSync('nix-store', ['-qR', root], { encoding: 'utf8' }).split('\n').filter(Boolean);
    execFileSync('sh', ['-c', `nix-store --export "$@" > '${file}.tmp'`, 'sh', ...paths]);
    renameSync(`${file}.tmp`, file);
    writeFileSync(rootFile, root);
  }
  const paths = execFileSync('nix-store', ['-qR', root], { encoding: 'utf8' }).split('\n').filter(Boolean).length;
  return { file, size: statSync(file).size, paths };
}

// --- the machine's limits ----------------------------------------------------------------------
async function sha256Rate(file) {
  const hash = createHash('sha256');
  const start = process.hrtime.bigint();
  let bytes = 0;
  for await (const chunk of createReadStream(file, { highWaterMark: 4 << 20 })) {
    hash.update(chunk);
    bytes += chunk.length;
  }
  hash.digest();
  return bytes / MB / (Number(process.hrtime.bigint() - start) / 1e9);
}

function gzipCliRate(file, limit) {
  const start = process.hrtime.bigint();
  execFileSync('sh', ['-c', `head -c ${limit} '${file}' | gzip -6 -c > /dev/null`]);
  return limit / MB / (Number(process.hrtime.bigint() - start) / 1e9);
}

async function nodeGzipRate(file, limit) {
  const start = process.hrtime.bigint();
  await pipeline(createReadStream(file, { end: limit - 1, highWaterMark: 1 << 20 }), createGzip({ level: 6 }), new Writable({ write: (_c, _e, cb) => cb() }));
  return limit / MB / (Number(process.hrtime.bigint() - start) / 1e9);
}

// --- build-image runs --------------------------------------------------------------------------
/** Runs the CLI, sampling its peak RSS (VmHWM covers worker threads: they share the process). */
function runMeasured(args) {
  return new Promise((resolveRun, reject) => {
    const start = process.hrtime.bigint();
    const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let peak = 0;
    let stderr = '';
    let stdout = '';
    child.stderr.on('data', (d) => (stderr += d));
    child.stdout.on('data', (d) => (stdout += d));
    const sample = () => {
      try {
        const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
        if (m) peak = Math.max(peak, Number(m[1]) * 1024);
      } catch {
        // exited
      }
    };
    const timer = setInterval(sample, 20);
    child.on('exit', (code) => {
      clearInterval(timer);
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      if (code !== 0) reject(new Error(`nix2oci ${args.join(' ')} exited ${code}: ${stderr}`));
      else resolveRun({ seconds, peakRss: peak, stdout, stderr });
    });
  });
}

async function build(closure, compression, out, extra = []) {
  rmSync(out, { force: true, recursive: true });
  // --no-cache: these are cold builds every run (the layer cache has its own scenarios below).
  return runMeasured(['build-image', '-q', '--no-cache', '--closure', closure.file, '--entrypoint', '/bin/sh', '--compression', compression, '--output', out, ...extra]);
}

// --- the run -----------------------------------------------------------------------------------
if (!existsSync(cli)) throw new Error('dist/ is missing: npm run build');
console.log(`nix2oci bench on ${execFileSync('nproc', { encoding: 'utf8' }).trim()} cores, Node ${process.version}${small ? ' (BENCH_SMALL)' : ''}`);
const big = small ? makeClosure('small', ['--arg', 'paths', '60', '--arg', 'bigPaths', '1', '--arg', 'bigMiB', '64'])
  : makeClosure('bench', []);
const half = small ? makeClosure('smaller', ['--arg', 'paths', '30', '--arg', 'bigPaths', '1', '--arg', 'bigMiB', '32'])
  : makeClosure('half', ['--arg', 'paths', '150', '--arg', 'bigPaths', '2']);
console.log(`closure: ${big.paths} store paths, ${(big.size / MB).toFixed(0)} MB export; half: ${half.paths} paths, ${(half.size / MB).toFixed(0)} MB\n`);

// Warm the page cache so the first measurement is not a disk measurement.
await sha256Rate(big.file);
const sha = await sha256Rate(big.file);
const sample = Math.min(big.size, 256 * 2 ** 20);
const gzipCli = gzipCliRate(big.file, sample);
const gzipNode = await nodeGzipRate(big.file, sample);
report('machine: sha256, one core', `${sha.toFixed(0)} MB/s`);
report('machine: gzip -6 (GNU gzip), one core', `${gzipCli.toFixed(1)} MB/s`);
report('machine: node zlib level 6, one core', `${gzipNode.toFixed(1)} MB/s`);

const out = join(work, 'out.tar');
const none = await build(big, 'none', out);
const noneRate = big.size / MB / none.seconds;
report('build-image --compression none', `${noneRate.toFixed(0)} MB/s`, `>= ${(sha / 2).toFixed(0)} (half of sha256)`, noneRate >= sha / 2);
report('  peak RSS', `${(none.peakRss / 2 ** 20).toFixed(0)} MiB`, '< 300 MiB', none.peakRss < 300 * 2 ** 20);

const gz = await build(big, 'gzip', out);
const gzRate = big.size / MB / gz.seconds;
report('build-image --compression gzip', `${gzRate.toFixed(1)} MB/s`, `${(gzRate / gzipCli).toFixed(2)} x gzip -6`);
report('  peak RSS', `${(gz.peakRss / 2 ** 20).toFixed(0)} MiB`, '< 300 MiB', gz.peakRss < 300 * 2 ** 20);

const halfRun = await build(half, 'gzip', join(work, 'half.tar'));
report('  peak RSS, closure of half the size', `${(halfRun.peakRss / 2 ** 20).toFixed(0)} MiB`, 'about the same (flat)', gz.peakRss < halfRun.peakRss * 1.25 + 20 * 2 ** 20);

// Wheels (issue 3): a realistic wheel installed into a layer, against a store-path layer of the same size.
const wheelBench = join(repo, 'scripts/bench/wheel.mjs');
if (existsSync(wheelBench)) {
  const { benchWheel } = await import(wheelBench);
  await benchWheel({ repo, work, small, report, sha });
}

// The layer cache (issue 5): cold, nothing changed, one changed store path.
const cacheBench = join(repo, 'scripts/bench/cache.mjs');
if (existsSync(cacheBench)) {
  const { benchCache } = await import(cacheBench);
  await benchCache({ repo, work, small, report, sha });
}

const failed = results.filter((r) => r.ok === false);
console.log(failed.length === 0 ? '\nall targets met' : `\n${failed.length} target(s) missed: ${failed.map((r) => r.name.trim()).join('; ')}`);
