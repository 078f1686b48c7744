// Bench hook (scripts/bench.mjs), issue 14: the real ML wheel stack (scripts/bench/ml-stack.mjs: torch
// CPU, transformers, tokenizers, safetensors, fastapi, uvicorn, numpy and their requirements) installed
// by pip and built into an image by nix2oci, side by side on the same wheels:
//   pip install --no-deps --no-compile --target DIR   what a Dockerfile's RUN pip install does
//   tar | pigz of that tree                           what its push then pays to compress the layer
//   nix2oci build-image --no-cache, none and gzip     the stand-in Python closure plus the stack
// Targets: none in at most half of pip's time; gzip in no more than pip's plus pigz's; peak RSS < 250 MiB.
import { execFileSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { ML_STACK_DIR, mlStackWheels } from './ml-stack.mjs';
import { pythonClosure, runJson } from './cache.mjs';

const MiB = 2 ** 20;
const RSS_TARGET = 250 * MiB;

function timed(command, args, options = {}) {
  const start = process.hrtime.bigint();
  execFileSync(command, args, { stdio: ['ignore', 'ignore', 'inherit'], ...options });
  return Number(process.hrtime.bigint() - start) / 1e9;
}

export async function benchPip({ repo, work, report }) {
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
    report('pip install --no-deps --no-compile --target', `${pip.toFixed(2)} s`, `${(installed / MiB).toFixed(0)} MiB installed`);
    report('  tar | pigz of the installed tree', `${pigz.toFixed(2)} s`);
    report('nix2oci --compression none --no-cache', `${none.seconds.toFixed(2)} s`, `<= ${(pip / 2).toFixed(2)} s (half of pip)`, none.seconds <= pip / 2);
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
