// Bench hook (scripts/bench.mjs), issue 14: the real ML wheel stack (scripts/bench/ml-stack.mjs: torch
// CPU, transformers, tokenizers, safetensors, fastapi, uvicorn, numpy and their requirements) installed
// by pip and built into an image by nix2oci, side by side on the same wheels:
//   pip install --no-deps --no-compile --target DIR   what a Dockerfile's RUN pip install does
//   tar | pigz of that tree                           what its push then pays to compress the layer
//   nix2oci build-image --no-cache, none and gzip     the stand-in Python closure plus the stack
// Targets: none in at most half of pip's time; gzip in no more than pip's plus pigz's; peak RSS < 250 MiB.
// The machine's own limit, measured in the same run: inflating every entry on one core (Node's zlib, what
// the unzip workers run). pip's time is mostly that inflate, on one core; nix2oci must also hash every
// byte twice (RECORD, the layer digest), so with C cores its floor is inflate / C + hashing / C.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, rmSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { ML_STACK_DIR, mlStackWheels } from './ml-stack.mjs';
import { pythonClosure, runJson } from './cache.mjs';

const MiB = 2 ** 20;
const RSS_TARGET = 250 * MiB;

/** Seconds to inflate every entry of the wheels on this thread, and the bytes it gave. */
async function inflateAll(repo, wheels) {
  const { ZipReader } = await import(join(repo, 'dist/wheels/zip.js'));
  const start = process.hrtime.bigint();
  let bytes = 0;
  for (const wheel of wheels) {
    const zip = await ZipReader.open(wheel);
    try {
      for (const entry of zip.entries) if (!entry.isDir) for await (const chunk of zip.read(entry)) bytes += chunk.length;
    } finally {
      await zip.close();
    }
  }
  return { seconds: Number(process.hrtime.bigint() - start) / 1e9, bytes };
}

/** Seconds to sha256 `bytes` bytes on one core: at the run's measured rate (MB/s), else measured here (1 MiB updates). */
function hashSeconds(bytes, sha) {
  if (sha) return bytes / (sha * 1e6);
  const chunk = Buffer.alloc(1 << 20, 7);
  const hash = createHash('sha256');
  const start = process.hrtime.bigint();
  for (let done = 0; done < bytes; done += chunk.length) hash.update(chunk);
  hash.digest();
  return Number(process.hrtime.bigint() - start) / 1e9;
}

function timed(command, args, options = {}) {
  // As for nix2oci's runs (runJson): the writeback of what ran before is not this command's time.
  execFileSync('sync');
  const start = process.hrtime.bigint();
  execFileSync(command, args, { stdio: ['ignore', 'ignore', 'inherit'], ...options });
  return Number(process.hrtime.bigint() - start) / 1e9;
}

export async function benchPip({ repo, work, report, sha }) {
  if (!existsSync('/usr/bin/python3.11')) return report('pip comparison', 'skipped', 'needs Debian\'s python3.11 (scripts/install-system-deps.sh)', false);
  let wheels;
  try {
    wheels = mlStackWheels();
  } catch (err) {
    return report('pip comparison', 'skipped', err.message, false);
  }
  const cli = join(repo, 'dist/cli/main.js');
  const python = pythonClosure(repo, work);
  const target = join(work, 'pip-target');
  const out = join(work, `pip-out-${process.pid}.tar`);
  console.log(`\npip comparison (${wheels.length} wheels of the ML stack, ${ML_STACK_DIR}):`);
  try {
    rmSync(target, { recursive: true, force: true });
    const pip = timed('pip', ['install', '--no-deps', '--no-compile', '--no-index', '--disable-pip-version-check', '-q', '--target', target, ...wheels]);
    const installed = Number(execFileSync('du', ['-sb', target], { encoding: 'utf8' }).split('\t')[0]);
    const pigz = timed('sh', ['-c', `tar -C '${target}' -cf - . | pigz -6 -p ${availableParallelism()} > /dev/null`]);
    const build = (compression) =>
      runJson(cli, [
        'build-image', '-q', '--no-cache', '--closure', python.file, '--python', python.interpreter, '--wheel', ML_STACK_DIR,
        // The stand-in Python has no C libraries: the library check would fail; everything else runs.
        '--no-library-check', '--entrypoint', '', '--compression', compression, '--output', out,
      ]);
    const none = await build('none');
    const gzip = await build('gzip');
    // After the builds: inflating here leaves this process's collector busy for a while, which a build
    // started right after would share the cores with.
    const inflate = await inflateAll(repo, wheels);
    const cores = availableParallelism();
    const floor = (inflate.seconds + 2 * hashSeconds(inflate.bytes, sha)) / cores;
    report('pip install --no-deps --no-compile --target', `${pip.toFixed(2)} s`, `${(installed / MiB).toFixed(0)} MiB installed`);
    report('  tar | pigz of the installed tree', `${pigz.toFixed(2)} s`);
    report('machine: inflate every entry, one core (node zlib)', `${inflate.seconds.toFixed(2)} s`, `${(inflate.bytes / inflate.seconds / 1e6).toFixed(0)} MB/s; pip took ${((pip / inflate.seconds) * 100).toFixed(0)} % of it`);
    report(`  floor on ${cores} cores: (inflate + 2 hashes) / ${cores}`, `${floor.toFixed(2)} s`, floor > pip / 2 ? 'above half of pip: that target cannot be met on this machine' : 'below half of pip');
    report('nix2oci --compression none --no-cache', `${none.seconds.toFixed(2)} s`, `<= ${(pip / 2).toFixed(2)} s (half of pip); ${(none.seconds / floor).toFixed(2)} x the floor`, none.seconds <= pip / 2);
    report('  layers (of that)', `${none.summary.timings.layers.toFixed(2)} s`);
    report('  peak RSS', `${(none.peakRss / MiB).toFixed(0)} MiB`, '< 250 MiB', none.peakRss < RSS_TARGET);
    report('nix2oci --compression gzip --no-cache', `${gzip.seconds.toFixed(2)} s`, `<= ${(pip + pigz).toFixed(2)} s (pip + pigz)`, gzip.seconds <= pip + pigz);
    report('  peak RSS', `${(gzip.peakRss / MiB).toFixed(0)} MiB`, '< 250 MiB', gzip.peakRss < RSS_TARGET);
  } finally {
    rmSync(target, { recursive: true, force: true });
    rmSync(out, { force: true });
  }
}

// Alone: node scripts/bench/pip.mjs (after npm run build).
if (import.meta.url === `file://${process.argv[1]}`) {
  const { resolve } = await import('node:path');
  const { mkdirSync } = await import('node:fs');
  const repo = resolve(import.meta.dirname, '../..');
  const work = join(repo, '.bench');
  mkdirSync(work, { recursive: true });
  await benchPip({ repo, work, report: (name, value, target, ok) => console.log(`${ok === undefined ? '  ' : ok ? 'ok' : '!!'} ${name.padEnd(54)} ${value.padStart(16)}   ${target ?? ''}`) });
}
