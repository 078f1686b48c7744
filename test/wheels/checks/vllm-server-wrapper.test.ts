import { describe, it, expect, beforeAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tools } from '../../helpers/tools.js';

const wrapper = fileURLToPath(new URL('../../../layers/vllm-rocm/vllm-server.sh', import.meta.url));

/** Runs the wrapper with a fake `python` on PATH that prints its argv, one argument a line. */
function run(env: Record<string, string>, args: string[] = []): string[] {
  const out = execFileSync('bash', [wrapper, ...args], {
    env: { PATH: `${fakeBin}:/usr/bin:/bin`, ...env },
    encoding: 'utf8',
  });
  return out.split('\n').slice(0, -1);
}

let fakeBin = '';
beforeAll(() => {
  fakeBin = mkdtempSync(join(tmpdir(), 'fake-python-'));
  writeFileSync(join(fakeBin, 'python'), '#!/bin/sh\nfor a in "$0" "$@"; do printf "%s\\n" "$a"; done\n');
  chmodSync(join(fakeBin, 'python'), 0o755);
});

const defaults = [
  '-m', 'vllm.entrypoints.openai.api_server',
  '--model', '/models/vllm/orchestrator/bf16',
  '--host', '0.0.0.0',
  '--port', '8000',
  '--gpu-memory-utilization', '0.48',
  '--dtype', 'bfloat16',
  '--tensor-parallel-size', '1',
  '--pipeline-parallel-size', '1',
  '--max-model-len', '32768',
];

describe.runIf(tools('bash'))('vllm-server wrapper', () => {
  it('runs the API server with the defaults, and no extra argument when EXTRA_VLLM_ARGS is empty', () => {
    const argv = run({ EXTRA_VLLM_ARGS: '' });
    expect(argv[0]).toBe(join(fakeBin, 'python'));
    expect(argv.slice(1)).toEqual(defaults);
    expect(run({ EXTRA_VLLM_ARGS: '  \t ' }).slice(1)).toEqual(defaults);
    expect(run({}).slice(1)).toEqual(defaults);
  });

  it('splits a non-empty EXTRA_VLLM_ARGS into words, without globbing', () => {
    const argv = run({ EXTRA_VLLM_ARGS: ' --enable-prefix-caching  --served-model-name  orchestrator\n--max-num-seqs 8 *' });
    expect(argv.slice(1 + defaults.length)).toEqual([
      '--enable-prefix-caching',
      '--served-model-name',
      'orchestrator',
      '--max-num-seqs',
      '8',
      '*',
    ]);
  });

  it('honours both names of a setting, the VLLM_* name winning over the image default', () => {
    const short = run({ GPU_MEM_UTIL: '0.3', MAX_MODEL_LEN: '8192' });
    expect(short).toContain('0.3');
    expect(short[short.indexOf('--max-model-len') + 1]).toBe('8192');
    const long = run({ VLLM_GPU_MEMORY_UTILIZATION: '0.25', VLLM_MAX_MODEL_LEN: '4096' });
    expect(long[long.indexOf('--gpu-memory-utilization') + 1]).toBe('0.25');
    expect(long[long.indexOf('--max-model-len') + 1]).toBe('4096');
    const both = run({ GPU_MEM_UTIL: '0.48', VLLM_GPU_MEMORY_UTILIZATION: '0.9', MAX_MODEL_LEN: '32768', VLLM_MAX_MODEL_LEN: '2048' });
    expect(both[both.indexOf('--gpu-memory-utilization') + 1]).toBe('0.9');
    expect(both[both.indexOf('--max-model-len') + 1]).toBe('2048');
  });

  it('passes --swap-space only when SWAP_SPACE is set', () => {
    expect(run({})).not.toContain('--swap-space');
    expect(run({ SWAP_SPACE: '' })).not.toContain('--swap-space');
    const argv = run({ SWAP_SPACE: '16' });
    expect(argv[argv.indexOf('--swap-space') + 1]).toBe('16');
  });

  it('takes model, host and port from the environment and passes its own arguments on last', () => {
    const argv = run({ MODEL_PATH: '/models/vllm/coder/bf16', VLLM_HOST: '127.0.0.1', VLLM_PORT: '8001' }, ['--seed', '7']);
    expect(argv[argv.indexOf('--model') + 1]).toBe('/models/vllm/coder/bf16');
    expect(argv[argv.indexOf('--host') + 1]).toBe('127.0.0.1');
    expect(argv[argv.indexOf('--port') + 1]).toBe('8001');
    expect(argv.slice(-2)).toEqual(['--seed', '7']);
  });

  it('uses VLLM_PYTHON when set (as the Nix-installed wrapper does)', () => {
    const argv = run({ VLLM_PYTHON: join(fakeBin, 'python') });
    expect(argv[0]).toBe(join(fakeBin, 'python'));
  });
});
