import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cliOk, REPO, runCli } from '../helpers/cli.js';
import { exportClosure, nixBuild } from '../helpers/nix.js';
import { podman, podmanLoad, podmanRemove } from '../helpers/podman.js';
import { buildPythonClosure, canBuildPythonClosure, type PythonClosure } from '../helpers/python-closure.js';
import { freePort } from '../helpers/registry.js';
import { tools } from '../helpers/tools.js';
import { debianWheels, makeVllmStandInWheel, makeZlibExtensionWheel } from '../helpers/vllm-wheels.js';
import { makeWheel } from '../helpers/wheels.js';

/**
 * The vllm-rocm recipe as shipped, built on a self-contained Python closure made with real Nix in place
 * of the ROCm one: `rocm` and `vllm-rocm-runtime` are stand-in store paths with the names the recipe
 * refers to, and the recipe's two wheels are stand-ins with the recipe's file names. The stand-in
 * vllm serves /health and /v1/models with the stdlib, through the real vllm-server wrapper.
 */
const ready = tools('nix-build', 'podman', 'patchelf') && (canBuildPythonClosure() || failInCi());

function failInCi(): boolean {
  if (process.env.CI) throw new Error('the vllm-rocm end-to-end test needs Debian\'s python3.11 (scripts/install-system-deps.sh)');
  return false;
}

describe.runIf(ready)('the vllm-rocm recipe, end to end', () => {
  let dir: string;
  let python: PythonClosure;
  let closureFile: string;
  let recipe: string;
  const wheels = () => {
    const { pip, setuptools } = debianWheels();
    return ['--wheel', pip, '--wheel', setuptools];
  };
  const loaded: string[] = [];

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'nix2oci-e2e-vllm-'));
    python = buildPythonClosure({ cxxRuntime: true });
    const [rocm, runtime] = nixBuild(`let runtime = builtins.storePath "${python.root}"; in [
      (mkDrv "rocm" "mkdir -p $out/lib; echo stand-in for the ROCm runtime > $out/lib/README")
      (mkDrv "vllm-rocm-runtime" "mkdir -p $out; ln -s \${runtime}/bin $out/bin")
    ]`);
    closureFile = join(dir, 'runtime.closure');
    exportClosure([rocm!, runtime!, python.vllmServer], closureFile);

    recipe = join(dir, 'image.json');
    copyFileSync(join(REPO, 'layers/vllm-rocm/image.json'), recipe);
    makeWheel({ dir, name: 'torch', version: '2.9.1', tag: 'cp311-cp311-linux_x86_64', rootIsPurelib: false, files: { 'torch/__init__.py': '__version__ = "2.9.1"\n' } });
    const vllm = makeVllmStandInWheel(dir);
    expect(vllm).toBe(join(dir, 'vllm-0.12.0+rocm711-cp311-cp311-linux_x86_64.whl'));
  });

  afterAll(() => {
    podmanRemove(...loaded);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('builds, and the container serves /health and /v1/models through the vllm-server wrapper', async () => {
    const out = join(dir, 'vllm.tar');
    const build = cliOk(['build-image', '--closure', closureFile, '--recipe', recipe, ...wheels(), '--output', out]);
    // The recipe's checks warn of what a real vLLM on ROCm needs and this closure lacks.
    expect(build.stderr).toMatch(/warning: .*amdsmi/);
    const inspect = JSON.parse(cliOk(['inspect', '--json', out]).stdout);
    const contents = inspect.layers.flatMap((l: { contents?: string[] }) => l.contents ?? []);
    expect(contents).toEqual(expect.arrayContaining(['torch-2.9.1-cp311-cp311-linux_x86_64.whl', 'vllm-0.12.0+rocm711-cp311-cp311-linux_x86_64.whl', 'image-root']));
    const env: string[] = inspect.config.env;
    expect(env).toContain('VLLM_TARGET_DEVICE=rocm');
    expect(env).toContain('MODEL_PATH=/models/vllm/orchestrator/bf16');
    expect(env.find((e) => e.startsWith('PYTHONPATH='))).toBe('PYTHONPATH=/opt/python/lib/python3.11/site-packages');

    const id = podmanLoad(out);
    loaded.push(id);
    const port = await freePort();
    const name = `nix2oci-vllm-${process.pid}`;
    podman(['--runtime', 'runc', 'run', '-d', '--rm', '--name', name, '--network', 'host',
      '-e', `VLLM_PORT=${port}`, '-e', 'EXTRA_VLLM_ARGS=--served-model-name  lane-a\t--enable-prefix-caching', id]);
    try {
      const health = await poll(`http://127.0.0.1:${port}/health`, 60_000);
      expect(health.status).toBe(200);
      const models = (await (await fetch(`http://127.0.0.1:${port}/v1/models`)).json()) as { data: Record<string, unknown>[] };
      expect(models.data[0]).toMatchObject({
        id: 'lane-a',
        root: '/models/vllm/orchestrator/bf16',
        max_model_len: 32768,
        gpu_memory_utilization: 0.48,
        dtype: 'bfloat16',
        swap_space: null,
        extra_args: ['--enable-prefix-caching'],
      });
    } finally {
      try {
        podman(['stop', '-t', '2', name]);
      } catch {
        // Already stopped.
      }
    }
  });

  it('refuses a wheel built for another Python, naming it', () => {
    const other = mkdtempSync(join(dir, 'cp312-'));
    const wheel = makeWheel({ dir: other, name: 'fastthing', version: '1.0', tag: 'cp312-cp312-linux_x86_64', files: { 'fastthing/__init__.py': '' } });
    const out = join(dir, 'cp312.tar');
    const result = runCli(['build-image', '--closure', closureFile, '--recipe', recipe, ...wheels(), '--wheel', wheel, '--output', out]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/fastthing-1\.0-cp312-cp312-linux_x86_64\.whl: built for CPython 3\.12.*3\.11/);
    expect(existsSync(out)).toBe(false);
  });

  it('fails on an unmet requirement with what was wanted and found, unless --no-deps-check', () => {
    const other = mkdtempSync(join(dir, 'unmet-'));
    const wheel = makeWheel({ dir: other, name: 'needy', version: '1.0', requires: ['numpy>=1.26', 'pip<5'], files: { 'needy/__init__.py': '' } });
    const out = join(dir, 'unmet.tar');
    const result = runCli(['build-image', '--closure', closureFile, '--recipe', recipe, ...wheels(), '--wheel', wheel, '--output', out]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/numpy/);
    expect(result.stderr).toMatch(/pip.*<5.*23\.0\.1/);
    expect(existsSync(out)).toBe(false);
    cliOk(['build-image', '-q', '--closure', closureFile, '--recipe', recipe, ...wheels(), '--wheel', wheel, '--no-deps-check', '--output', out]);
    expect(existsSync(out)).toBe(true);
  });

  it('reports an extension module whose shared library the closure lacks', () => {
    const other = mkdtempSync(join(dir, 'zlib-'));
    const wheel = makeZlibExtensionWheel(other);
    const out = join(dir, 'zlib.tar');
    const result = runCli(['build-image', '--closure', closureFile, '--recipe', recipe, ...wheels(), '--wheel', wheel, '--output', out]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('libz.so.1: needed by 1 file in 1 wheel (zlibext) — add zlib to the closure (zlib)');
    expect(existsSync(out)).toBe(false);
  });
});

async function poll(url: string, timeoutMs: number): Promise<Response> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      return await fetch(url, { signal: AbortSignal.timeout(2000) });
    } catch (err) {
      last = err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  throw new Error(`${url} did not answer within ${timeoutMs} ms: ${String(last)}`);
}
