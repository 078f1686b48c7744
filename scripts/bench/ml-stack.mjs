// The real ML wheel stack of issue 14, from this machine's pip configuration (its local index): torch
// (CPU), transformers, tokenizers, safetensors, fastapi, uvicorn, numpy and everything they require,
// for CPython 3.11 on manylinux x86_64. Downloaded once into a stable directory and reused; used by the
// pip comparison bench (scripts/bench/pip.mjs) and the ML stack e2e test (test/e2e/ml-stack.test.ts).
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

export const ML_STACK = ['torch==2.13.0+cpu', 'transformers', 'tokenizers', 'safetensors', 'fastapi', 'uvicorn', 'numpy'];

/** What `pip download` is asked for: binary wheels only, for CPython 3.11 on manylinux x86_64 (2.28 and the older tags it includes). */
const PIP_ARGS = [
  'download', '--only-binary=:all:', '--python-version', '3.11',
  '--platform', 'manylinux_2_28_x86_64', '--platform', 'manylinux_2_17_x86_64', '--platform', 'manylinux2014_x86_64',
  // An index the machine cannot reach fails at once instead of after five retries.
  '--retries', '0', '--timeout', '15', '--progress-bar', 'off',
];

export const ML_STACK_DIR = join(homedir(), '.cache', 'nix2oci-test', 'ml-stack');

/**
 * The stack's wheel files (sorted), downloaded with pip into `dir` the first time. Throws one line saying
 * what could not be had and why (pip's own last error) when pip cannot get them.
 */
export function mlStackWheels(dir = ML_STACK_DIR) {
  const marker = join(dir, '.complete');
  const wanted = ML_STACK.join(' ');
  const wheels = () => readdirSync(dir).filter((f) => f.endsWith('.whl')).sort().map((f) => join(dir, f));
  if (existsSync(marker) && readFileSync(marker, 'utf8') === wanted) return wheels();
  const temp = `${dir}.tmp-${process.pid}`;
  rmSync(temp, { recursive: true, force: true });
  try {
    execFileSync('pip', [...PIP_ARGS, '-d', temp, ...ML_STACK], { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8', timeout: 900_000 });
  } catch (err) {
    rmSync(temp, { recursive: true, force: true });
    const why = `${err.stderr ?? ''}`.split('\n').filter((l) => /^ERROR:/.test(l)).pop() ?? err.message.split('\n')[0];
    throw new Error(`cannot get the ML wheel stack (${wanted}) with pip download (see pip config list): ${why.replace(/^ERROR:\s*/, '')}`);
  }
  writeFileSync(join(temp, '.complete'), wanted);
  rmSync(dir, { recursive: true, force: true });
  renameSync(temp, dir);
  return wheels();
}
