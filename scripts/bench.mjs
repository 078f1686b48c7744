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

/** The machine is shared: CPU seconds say what a run cost, wall seconds what it took. USER_HZ is 100 on Linux. */
const CLOCK_TICKS = 100;
/** utime + stime (threads included) from a /proc/<pid>/stat line; the name field may hold spaces. */
function processTicks(stat) {
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}
/** CPU seconds of this process's waited-for children (cutime + cstime). */
function childrenCpuSeconds() {
  const fields = readFileSync('/proc/self/stat', 'utf8');
  const rest = fields.slice(fields.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[13]) + Number(rest[14])) / CLOCK_TICKS;
}

/** gzip -6 on one core: wall rate, and rate per CPU second of gzip itself (head's reads are nearly free). */
function gzipCliRate(file, limit) {
  const start = process.hrtime.bigint();
  const cpuBefore = childrenCpuSeconds();
  execFileSync('sh', ['-c', `head -c ${limit} '${file}' | gzip -6 -c > /dev/null`]);
  const cpu = childrenCpuSeconds() - cpuBefore;
  return { wall: limit / MB / (Number(process.hrtime.bigint() - start) / 1e9), cpu: limit / MB / cpu };
}

async function nodeGzipRate(file, limit) {
  const start = process.hrtime.bigint();
  await pipeline(createReadStream(file, { end: limit - 1, highWaterMark: 1 << 20 }), createGzip({ level: 6 }), new Writable({ write: (_c, _e, cb) => cb() }));
  return limit / MB / (Number(process.hrtime.bigint() - start) / 1e9);
}

// --- build-image runs --------------------------------------------------------------------------
/** Runs the CLI, sampling its peak RSS (VmHWM covers worker threads: they share the process). */
function runMeasured(args, entry = cli) {
  return new Promise((resolveRun, reject) => {
    const start = process.hrtime.bigint();
    const child = spawn(process.execPath, [entry, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let peak = 0;
    let cpuTicks = 0;
    let stderr = '';
    let stdout = '';
    child.stderr.on('data', (d) => (stderr += d));
    child.stdout.on('data', (d) => (stdout += d));
    const sample = () => {
      try {
        const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
        if (m) peak = Math.max(peak, Number(m[1]) * 1024);
        cpuTicks = Math.max(cpuTicks, processTicks(readFileSync(`/proc/${child.pid}/stat`, 'utf8')));
      } catch {
        // exited
      }
    };
    const timer = setInterval(sample, 20);
    child.on('exit', (code) => {
      clearInterval(timer);
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      if (code !== 0) reject(new Error(`nix2oci ${args.join(' ')} exited ${code}: ${stderr}`));
      else resolveRun({ seconds, cpuSeconds: cpuTicks / CLOCK_TICKS, peakRss: peak, stdout, stderr });
    });
  });
}

async function build(closure, compression, out, extra = []) {
  rmSync(out, { force: true, recursive: true });
  // --no-cache: these are cold builds every run (the layer cache has its own scenarios below).
  return runMeasured(['build-image', '-q', '--no-cache', '--closure', closure.file, '--entrypoint', '', '--compression', compression, '--output', out, ...extra]);
}

/** Sum of the gzip layer blobs' sizes in an oci-archive, from its manifest. */
function gzipBytes(archive) {
  const index = JSON.parse(execFileSync('tar', ['-xOf', archive, 'index.json'], { encoding: 'utf8' }));
  const manifestPath = `blobs/sha256/${index.manifests[0].digest.slice(7)}`;
  const manifest = JSON.parse(execFileSync('tar', ['-xOf', archive, manifestPath], { encoding: 'utf8' }));
  return manifest.layers.reduce((sum, layer) => sum + layer.size, 0);
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
const gzipCliRun = gzipCliRate(big.file, sample);
const gzipCli = gzipCliRun.wall;
const gzipNode = await nodeGzipRate(big.file, sample);
report('machine: sha256, one core', `${sha.toFixed(0)} MB/s`);
report('machine: gzip -6 (GNU gzip), one core', `${gzipCli.toFixed(1)} MB/s`);
report('  per CPU second', `${gzipCliRun.cpu.toFixed(1)} MB/s`);
report('machine: node zlib level 6, one core', `${gzipNode.toFixed(1)} MB/s`);

const out = join(work, 'out.tar');
const none = await build(big, 'none', out);
const noneRate = big.size / MB / none.seconds;
report('build-image --compression none', `${noneRate.toFixed(0)} MB/s`, `>= ${(sha / 2).toFixed(0)} (half of sha256)`, noneRate >= sha / 2);
report('  peak RSS', `${(none.peakRss / 2 ** 20).toFixed(0)} MiB`, '< 300 MiB', none.peakRss < 300 * 2 ** 20);

const gz = await build(big, 'gzip', out);
const gzRate = big.size / MB / gz.seconds;
report('build-image --compression gzip', `${gzRate.toFixed(1)} MB/s`, `${(gzRate / gzipCli).toFixed(2)} x gzip -6 (>= 1.7)`, gzRate / gzipCli >= 1.7);
// Under load the wall ratio moves with the neighbours; CPU seconds show the cores used and the overhead.
report('  cores used (CPU seconds / wall seconds)', `${(gz.cpuSeconds / gz.seconds).toFixed(2)}`);
report('  per CPU second', `${(big.size / MB / gz.cpuSeconds).toFixed(1)} MB/s`, `${(big.size / MB / gz.cpuSeconds / gzipCliRun.cpu).toFixed(2)} x gzip -6 per CPU second`);
report('  blob bytes (all layers)', `${(gzipBytes(out) / MB).toFixed(1)} MB`);
report('  peak RSS', `${(gz.peakRss / 2 ** 20).toFixed(0)} MiB`, '< 300 MiB', gz.peakRss < 300 * 2 ** 20);

const halfRun = await build(half, 'gzip', join(work, 'half.tar'));
report('  peak RSS, closure of half the size', `${(halfRun.peakRss / 2 ** 20).toFixed(0)} MiB`, 'about the same (flat)', gz.peakRss < halfRun.peakRss * 1.25 + 20 * 2 ** 20);

// The layer writer alone (issue 5): the whole closure as one layer, its 4 MiB parts compressed as
// independent gzip members on every core; the same with one job; and one deflate stream for the ratio.
{
  const script = join(repo, 'scripts/bench/layer-writer.mjs');
  const dir = join(work, 'layer');
  const run = async (jobs, mode) => {
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir);
    const r = await runMeasured([big.file, dir, String(jobs), ...(mode ? [mode] : [])], script);
    return { ...r, ...JSON.parse(r.stdout) };
  };
  const cores = Number(execFileSync('nproc', { encoding: 'utf8' }).trim());
  const all = await run(cores);
  const one = await run(1);
  const single = await run(1, 'single');
  rmSync(dir, { recursive: true, force: true });
  const rate = (r) => r.tarBytes / MB / r.seconds;
  report(`layer writer, one ${(all.tarBytes / MB).toFixed(0)} MB gzip layer, ${cores} jobs`, `${rate(all).toFixed(1)} MB/s`, `${(rate(all) / gzipCli).toFixed(2)} x gzip -6 (>= 1.7)`, rate(all) / gzipCli >= 1.7);
  report('  cores used (CPU seconds / wall seconds)', `${(all.cpuSeconds / all.seconds).toFixed(2)}`);
  report('  per CPU second', `${(all.tarBytes / MB / all.cpuSeconds).toFixed(1)} MB/s`, `${(all.tarBytes / MB / all.cpuSeconds / gzipCliRun.cpu).toFixed(2)} x gzip -6 per CPU second`);
  report('  peak RSS', `${(all.peakRss / 2 ** 20).toFixed(0)} MiB`, '< 300 MiB', all.peakRss < 300 * 2 ** 20);
  report('  the same with --jobs 1', `${rate(one).toFixed(1)} MB/s`, `${(rate(all) / rate(one)).toFixed(2)} x faster with ${cores}`);
  report('  same digest with 1 job', one.digest === all.digest ? 'yes' : 'NO', '', one.digest === all.digest);
  report('  size vs one deflate stream', `${all.blobBytes} B`, `${(((all.blobBytes / single.blobBytes) - 1) * 100).toFixed(3)} % larger`);
}

// The benches of later issues, each a module of scripts/bench/ given the run's context (each takes
// what it needs of it: the bench closure, the machine's sha256 rate, the measured runner):
//   wheel.mjs (issue 3): a realistic wheel installed into a layer, against a store-path layer of the same size;
//   pip.mjs (issue 14): the real ML wheel stack next to pip (pip --target, pigz of its tree, nix2oci none and gzip);
//   cache.mjs (issue 5): the layer cache on an image shaped like the vLLM one (closure, Python, torch and vllm
//     wheels): cold, nothing changed, one changed wheel, one changed store path, with the bytes a push would upload;
//   registry-cache.mjs (issue 12): the registry as a shared layer cache, fresh CI runners with and without --cache-from;
//   zstd.mjs (issue 10): gzip and zstd side by side: size, cold build, decompression, peak RSS.
const hooks = [
  ['wheel.mjs', 'benchWheel'],
  ['pip.mjs', 'benchPip'],
  ['cache.mjs', 'benchCache'],
  ['registry-cache.mjs', 'benchRegistryCache'],
  ['zstd.mjs', 'benchZstd'],
];
for (const [file, name] of hooks) {
  const hook = join(repo, 'scripts/bench', file);
  if (existsSync(hook)) await (await import(hook))[name]({ repo, work, small, report, sha, runMeasured, closure: big });
}

const failed = results.filter((r) => r.ok === false);
console.log(failed.length === 0 ? '\nall targets met' : `\n${failed.length} target(s) missed: ${failed.map((r) => r.name.trim()).join('; ')}`);
