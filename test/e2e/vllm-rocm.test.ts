import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
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
 * The vllm-rocm recipes as shipped, built on Python closures made with real Nix in place of the ROCm
 * one: `rocm` and `vllm-rocm-runtime` are stand-in store paths with the names the recipes refer to,
 * and each recipe's two wheels are stand-ins with the recipe's file names.
 *  - image.py311.json on a self-contained Python 3.11 closure (Debian's interpreter, relocated): built
 *    and run in podman; the stand-in vllm serves /health and /v1/models with the stdlib, through the
 *    real vllm-server wrapper.
 *  - image.json (the default, Python 3.12) on a closure whose `python3-3.12` store path has the layout
 *    of a Python 3.12 (bin/python3.12, lib/python3.12/site-packages, include/python3.12) but whose
 *    bin/python3.12 is a stand-in script: no Python 3.12 can be had on this machine's package sources.
 *    So that image is built and inspected, not run.
 */
const ready = tools('nix-build', 'podman', 'patchelf') && (canBuildPythonClosure() || failInCi());

function failInCi(): boolean {
  if (process.env.CI) throw new Error('the vllm-rocm end-to-end test needs Debian\'s python3.11 (scripts/install-system-deps.sh)');
  return false;
}

describe.runIf(ready)('the vllm-rocm recipe for Python 3.11, end to end', () => {
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
    copyFileSync(join(REPO, 'layers/vllm-rocm/image.py311.json'), recipe);
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
    // The recipe's checks warn of what a real vLLM on ROCm needs and this closure lacks; AITER is off.
    expect(build.stderr).toMatch(/warning: .*amdsmi/);
    expect(build.stderr).not.toMatch(/AITER/);
    const inspect = JSON.parse(cliOk(['inspect', '--json', out]).stdout);
    const contents = inspect.layers.flatMap((l: { contents?: string[] }) => l.contents ?? []);
    expect(contents).toEqual(expect.arrayContaining(['torch-2.9.1-cp311-cp311-linux_x86_64.whl', 'vllm-0.12.0+rocm711-cp311-cp311-linux_x86_64.whl', 'image-root']));
    const env: string[] = inspect.config.env;
    expect(env).toContain('VLLM_TARGET_DEVICE=rocm');
    expect(env).toEqual(expect.arrayContaining(['VLLM_ROCM_USE_AITER=0', 'PYTORCH_ROCM_ARCH=gfx1151', 'TOKENIZERS_PARALLELISM=false']));
    expect(env.some((e) => e.startsWith('HSA_OVERRIDE_GFX_VERSION='))).toBe(false);
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

  it('refuses a wheel built for another Python, naming it and the closure to export instead', () => {
    const other = mkdtempSync(join(dir, 'cp312-'));
    const wheel = makeWheel({ dir: other, name: 'fastthing', version: '1.0', tag: 'cp312-cp312-linux_x86_64', files: { 'fastthing/__init__.py': '' } });
    const out = join(dir, 'cp312.tar');
    const result = runCli(['build-image', '--closure', closureFile, '--recipe', recipe, ...wheels(), '--wheel', wheel, '--output', out]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/fastthing-1\.0-cp312-cp312-linux_x86_64\.whl: built for CPython 3\.12.*3\.11/);
    expect(result.stderr).toContain("export the closure with Python 3.12 instead (nixpkgs' python312), or use a wheel built for cp311");
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

const ready312 = tools('nix-build', 'nix-store');

describe.runIf(ready312)('the vllm-rocm recipe for Python 3.12 (the default), built', () => {
  let dir: string;
  let closureFile: string;
  let recipe: string;
  const debian = () => {
    const { pip, setuptools } = debianWheels();
    return ['--wheel', pip, '--wheel', setuptools];
  };

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'nix2oci-e2e-vllm312-'));
    // A Python 3.12's layout; bin/python3.12 is a stand-in that says so if anything runs it.
    const roots = nixBuild(`let
      python = mkDrv "python3-3.12.8" ''
        set -e
        mkdir -p $out/bin $out/lib/python3.12/site-packages $out/include/python3.12
        printf '#!/bin/sh\\necho "stand-in for Python 3.12: not a real interpreter" >&2\\nexit 127\\n' > $out/bin/python3.12
        chmod +x $out/bin/python3.12
        ln -s python3.12 $out/bin/python3
        echo '/* stand-in */' > $out/include/python3.12/Python.h
      '';
      vllmServer = mkDrv "vllm-server" "mkdir -p $out/bin; printf '#!/bin/sh\\nexec \${python}/bin/python3 -m vllm.entrypoints.openai.api_server\\n' > $out/bin/vllm-server; chmod +x $out/bin/vllm-server";
      rocm = mkDrv "rocm" "mkdir -p $out/lib; echo stand-in for the ROCm runtime > $out/lib/README";
      runtime = mkDrv "vllm-rocm-runtime" "mkdir -p $out; ln -s \${python}/bin $out/bin; ln -s \${vllmServer}/bin/vllm-server $out/vllm-server";
    in [ runtime rocm ]`);
    closureFile = join(dir, 'runtime312.closure');
    exportClosure(roots, closureFile);

    recipe = join(dir, 'image.json');
    copyFileSync(join(REPO, 'layers/vllm-rocm/image.json'), recipe);
    makeWheel({ dir, name: 'torch', version: '2.9.1', tag: 'cp312-cp312-linux_x86_64', rootIsPurelib: false, files: { 'torch/__init__.py': '__version__ = "2.9.1"\n' } });
    expect(makeVllmStandInWheel(dir, { python: '3.12' })).toBe(join(dir, 'vllm-0.12.0+rocm711-cp312-cp312-linux_x86_64.whl'));
  });

  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('installs the cp312 wheels for Python 3.12, with the gfx1151 settings and no AITER warning', () => {
    const out = join(dir, 'vllm312.tar');
    const build = cliOk(['build-image', '--closure', closureFile, '--recipe', recipe, ...debian(), '--output', out]);
    expect(build.stderr).toMatch(/warning: .*amdsmi/);
    expect(build.stderr).not.toMatch(/AITER/);
    const inspect = JSON.parse(cliOk(['inspect', '--json', out]).stdout);
    const contents = inspect.layers.flatMap((l: { contents?: string[] }) => l.contents ?? []);
    expect(contents).toEqual(expect.arrayContaining(['torch-2.9.1-cp312-cp312-linux_x86_64.whl', 'vllm-0.12.0+rocm711-cp312-cp312-linux_x86_64.whl']));
    const env: string[] = inspect.config.env;
    expect(env).toContain('PYTHONPATH=/opt/python/lib/python3.12/site-packages');
    expect(env).toEqual(expect.arrayContaining(['VLLM_ROCM_USE_AITER=0', 'PYTORCH_ROCM_ARCH=gfx1151', 'HIP_FORCE_DEV_KERNARG=1']));
  });

  it('refuses the 3.11 wheels on this closure, naming the closure to export instead', () => {
    const other = mkdtempSync(join(dir, 'cp311-'));
    const wheel = makeVllmStandInWheel(other, { python: '3.11' });
    const bare = join(other, 'image.json');
    writeFileSync(bare, JSON.stringify({ ...JSON.parse(readFileSync(recipe, 'utf8')), wheels: [] }));
    const out = join(dir, 'cp311.tar');
    const result = runCli(['build-image', '--closure', closureFile, '--recipe', bare, '--wheel', wheel, '--output', out]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(
      "vllm-0.12.0+rocm711-cp311-cp311-linux_x86_64.whl: built for CPython 3.11 (tag cp311-cp311-linux_x86_64), the image's Python is 3.12: " +
        "export the closure with Python 3.11 instead (nixpkgs' python311), or use a wheel built for cp312",
    );
    expect(existsSync(out)).toBe(false);
  });

  it("warns when the recipe's env turns AITER on for gfx1151, and keeps quiet about the traps the recipe skips", () => {
    const out = join(dir, 'aiter.tar');
    const on = cliOk(['build-image', '-q', '--closure', closureFile, '--recipe', recipe, ...debian(), '--env', 'VLLM_ROCM_USE_AITER=1', '--output', out]);
    expect(on.stderr).toMatch(/warning: VLLM_ROCM_USE_AITER=1 does nothing here: the image has no aiter module.*targets PYTORCH_ROCM_ARCH=gfx1151/);

    const skipping = join(dir, 'image-skip.json');
    const base = JSON.parse(readFileSync(recipe, 'utf8'));
    writeFileSync(skipping, JSON.stringify({ ...base, checks: { ...base.checks, skipTraps: ['amdsmi', 'aiter'] } }));
    const off = cliOk(['build-image', '-q', '--closure', closureFile, '--recipe', skipping, ...debian(), '--env', 'VLLM_ROCM_USE_AITER=1', '--output', out]);
    expect(off.stderr).not.toMatch(/amdsmi|AITER/);
    // The others still speak: this closure has no gcc runtime and no C compiler.
    expect(off.stderr).toMatch(/warning: .*C compiler .*\[checks\.skipTraps: "c-compiler"\]/);
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
