import { describe, it, expect } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { tools } from '../../helpers/tools.js';
import { loadRecipe } from '../../../src/recipe/load.js';

const recipeDir = fileURLToPath(new URL('../../../layers/vllm-rocm/', import.meta.url));
const opsDir = fileURLToPath(new URL('../../../ops/', import.meta.url));

describe('vllm-rocm image.json (Python 3.12) and image.py311.json', () => {
  const recipe = loadRecipe(`${recipeDir}image.json`);
  const py311 = loadRecipe(`${recipeDir}image.py311.json`);

  it('passes the recipe schema and sets the environment the wrapper and ROCm read, right for gfx1151', () => {
    expect(recipe.env).toEqual({
      PATH: '/bin',
      SSL_CERT_FILE: '/etc/ssl/certs/ca-bundle.crt',
      ROCM_HOME: '{{rocm}}',
      ROCM_PATH: '{{rocm}}',
      LD_LIBRARY_PATH: '{{rocm}}/lib',
      HIP_VISIBLE_DEVICES: '0',
      // gfx1151 is supported natively from ROCm 7.0.2: no HSA_OVERRIDE_GFX_VERSION (11.0.0 would spoof gfx1100).
      PYTORCH_ROCM_ARCH: 'gfx1151',
      VLLM_TARGET_DEVICE: 'rocm',
      // AITER is built for gfx942/gfx950 only.
      VLLM_ROCM_USE_AITER: '0',
      VLLM_ROCM_USE_SKINNY_GEMM: '1',
      // vLLM's docker/Dockerfile.rocm final stage, the ones that apply to one APU.
      TOKENIZERS_PARALLELISM: 'false',
      SAFETENSORS_FAST_GPU: '1',
      HIP_FORCE_DEV_KERNARG: '1',
      PYTORCH_NVML_BASED_CUDA_CHECK: '1',
      VLLM_HOST: '0.0.0.0',
      VLLM_PORT: '8000',
      GPU_MEM_UTIL: '0.48',
      MAX_MODEL_LEN: '32768',
      MODEL_PATH: '/models/vllm/orchestrator/bf16',
    });
  });

  it('runs the vllm-server wrapper on 8000/tcp with /models, labels, a health check and the two cp312 wheels', () => {
    expect(recipe.entrypoint).toEqual(['{{vllm-server}}/bin/vllm-server']);
    expect(recipe.ports).toEqual(['8000/tcp']);
    expect(recipe.volumes).toEqual(['/models']);
    expect(recipe.labels).toMatchObject({
      'org.opencontainers.image.description': 'vLLM with ROCm support (Nix-built), Python 3.12, for gfx1151 (Strix Halo)',
      'org.opencontainers.image.vendor': 'Cortex Project',
    });
    expect(recipe.healthcheck?.test).toEqual(['CMD', 'curl', '-fsS', 'http://localhost:8000/health']);
    expect(recipe.wheels).toEqual(['torch-2.9.1-cp312-cp312-linux_x86_64.whl', 'vllm-0.12.0+rocm711-cp312-cp312-linux_x86_64.whl']);
  });

  it('differs for Python 3.11 only in its wheels, tag and description', () => {
    expect(py311.wheels).toEqual(['torch-2.9.1-cp311-cp311-linux_x86_64.whl', 'vllm-0.12.0+rocm711-cp311-cp311-linux_x86_64.whl']);
    expect(py311.tag).toBe(`${recipe.tag}-py311`);
    const rest = (r: typeof recipe) => ({ ...r, wheels: undefined, tag: undefined, labels: { ...r.labels, 'org.opencontainers.image.description': undefined } });
    expect(rest(py311)).toEqual(rest(recipe));
  });
});

/**
 * closure.nix needs nixpkgs, which this offline machine has not: CI checks that it parses, and
 * evaluates it against a stand-in `pkgs` that records what it is asked for, to check its structure:
 * the names image.json refers to, the wrapper built from vllm-server.sh, the Python packages asked for.
 */
const STUB_PKGS = `
let
  drv = name: attrs: attrs // { inherit name; outPath = "/nix/store/00000000000000000000000000000000-\${name}"; };
  pythonNames = [ "fastapi" "uvicorn" "pydantic" "numpy" "transformers" "filelock" "typing-extensions" ];
  ps = builtins.listToAttrs (map (n: { name = n; value = drv n { }; }) pythonNames) // {
    toPythonModule = d: d // { pythonModule = true; };
    wrapPython = drv "wrap-python-hook" { };
  };
  pythonOf = version: drv "python3-\${version}" {
    pkgs = ps;
    withPackages = f: drv "python3-\${version}-env" { packages = f ps; };
  };
  python311 = pythonOf "3.11.9";
  python312 = pythonOf "3.12.8";
  rocmNames = [ "rocm-core" "rocm-runtime" "rocm-comgr" "rocm-device-libs" "clr" "rocminfo" "rocm-smi" "rocblas" "hipblas"
    "hipblas-common" "hipblaslt" "rocsolver" "hipsolver" "rocsparse" "hipsparse" "rocrand" "hiprand" "rocfft" "hipfft"
    "miopen" "rccl" "roctracer" "rocprofiler-register" ];
  rocmPackages = builtins.listToAttrs (map (n: { name = n; value = drv n { }; }) rocmNames) // {
    amdsmi = drv "amdsmi-7.1.1" { override = args: drv "amdsmi-7.1.1" { python = args.python.name; }; };
  };
  simple = names: builtins.listToAttrs (map (n: { name = n; value = drv n { }; }) names);
in
simple [ "glibc" "zlib" "zstd" "libdrm" "numactl" "elfutils" "libffi" "openssl" "bzip2" "xz" "bashInteractive" "coreutils" "curl" "cacert" ]
// {
  lib = { concatMap = f: l: builtins.concatLists (map f l); };
  inherit python311 python312 rocmPackages;
  stdenv = { cc = drv "gcc-wrapper-14" { cc = { lib = drv "gcc-14-lib" { }; }; }; };
  symlinkJoin = args: drv args.name args;
  writeShellScriptBin = name: text: drv name { inherit text; };
  buildEnv = args: drv args.name args;
}
`;

describe.runIf(tools('nix-instantiate'))('vllm-rocm closure.nix', () => {
  it('parses', () => {
    execFileSync('nix-instantiate', ['--parse', `${recipeDir}closure.nix`], { stdio: ['ignore', 'ignore', 'pipe'] });
  });

  const evaluate = (args: string) => {
    const expr = `
      let r = import ${recipeDir}closure.nix ({ pkgs = ${STUB_PKGS}; } // ${args});
      in {
        name = r.name;
        paths = map (p: p.name) r.paths;
        rocm = r.passthru.rocmHome.name;
        rocmPaths = map (p: p.name) r.passthru.rocmHome.paths;
        server = r.passthru.vllmServer.name;
        wrapper = r.passthru.vllmServer.text;
        python = map (p: p.name) r.passthru.pythonEnv.packages;
        pythonVersion = r.passthru.pythonVersion;
        amdsmiPython = (builtins.elemAt (builtins.filter (p: p ? pythonModule) r.passthru.pythonEnv.packages) 0).python;
      }`;
    return spawnSync('nix-instantiate', ['--eval', '--strict', '--json', '-E', expr], { encoding: 'utf8' });
  };

  it('evaluates to the runtime env image.json names, with Python 3.12 and the wrapper built from vllm-server.sh', () => {
    const run = evaluate('{ }');
    expect(run.status, run.stderr).toBe(0);
    const result = JSON.parse(run.stdout);
    // image.json's {{vllm-rocm-runtime}}-style names: copyToRoot, {{vllm-server}}, {{rocm}}.
    const image = JSON.parse(readFileSync(`${recipeDir}image.json`, 'utf8'));
    expect(image.copyToRoot).toEqual([result.name]);
    expect(result.name).toBe('vllm-rocm-runtime');
    expect(result.server).toBe('vllm-server');
    expect(result.rocm).toBe('rocm');
    expect(result.pythonVersion).toBe('3.12');
    expect(result.paths).toEqual(expect.arrayContaining(['python3-3.12.8-env', 'vllm-server', 'rocm', 'bashInteractive', 'coreutils', 'curl', 'cacert', 'gcc-wrapper-14', 'gcc-14-lib']));
    expect(result.rocmPaths).toEqual(expect.arrayContaining(['rocm-core', 'clr', 'rocblas', 'hipblaslt', 'amdsmi-7.1.1']));
    // amdsmi is rebuilt for the image's Python and made importable from its env.
    expect(result.amdsmiPython).toBe('python3-3.12.8');
    expect(result.python).toEqual(['filelock', 'typing-extensions', 'fastapi', 'uvicorn', 'pydantic', 'numpy', 'transformers', 'amdsmi-7.1.1']);
    // Names the stand-in nixpkgs lacks are left out with a trace, not an evaluation error.
    expect(run.stderr).toMatch(/vllm-rocm: nixpkgs has no python312Packages\.prometheus-fastapi-instrumentator; left out/);
    // The wrapper: VLLM_PYTHON defaults to the env's python3, then the very same script.
    const script = readFileSync(`${recipeDir}vllm-server.sh`, 'utf8');
    expect(result.wrapper).toBe(`export VLLM_PYTHON="\${VLLM_PYTHON:-/nix/store/00000000000000000000000000000000-python3-3.12.8-env/bin/python3}"\n${script}\n`);
  });

  it('takes python = "3.11" for wheels built for it, and refuses a Python it has no wheels for', () => {
    const run = evaluate('{ python = "3.11"; }');
    expect(run.status, run.stderr).toBe(0);
    const result = JSON.parse(run.stdout);
    expect(result.pythonVersion).toBe('3.11');
    expect(result.paths).toContain('python3-3.11.9-env');
    expect(result.amdsmiPython).toBe('python3-3.11.9');
    expect(run.stderr).toMatch(/nixpkgs has no python311Packages\.prometheus-fastapi-instrumentator/);

    const bad = evaluate('{ python = "3.13"; }');
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toContain('vllm-rocm closure.nix: python = "3.13" is not supported; use "3.12" (vLLM\'s ROCm wheels) or "3.11"');
  });
});

describe('vllm-rocm deployment files', () => {
  const compose = readFileSync(`${opsDir}docker-compose.nix.yml`, 'utf8');

  it('gives each model lane its own service, port, model and GPU share', () => {
    const lanes = [
      { name: 'orchestrator', port: 11434 },
      { name: 'coder', port: 11435 },
      { name: 'fast_rag', port: 11436 },
    ];
    for (const lane of lanes) {
      expect(compose).toContain(`vllm-${lane.name.replace('_', '-')}:`);
      expect(compose).toContain(`"${lane.port}:8000"`);
      expect(compose).toContain(`MODEL_PATH: /models/vllm/${lane.name}/bf16`);
    }
    const shares = [...compose.matchAll(/GPU_MEM_UTIL: "([0-9.]+)"/g)].map((m) => Number(m[1]));
    expect(shares).toHaveLength(3);
    expect(shares.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(0.95);
  });

  it('passes the GPU devices, groups, shared memory, models and health check', () => {
    for (const needle of ['/dev/kfd', '/dev/dri', 'video', 'render', 'shm_size: 16g', './models:/models:ro', 'http://localhost:8000/health']) {
      expect(compose).toContain(needle);
    }
  });

  it('has a systemd unit running the lanes with podman', () => {
    const unit = readFileSync(`${opsDir}vllm-rocm@.service`, 'utf8');
    // systemd joins backslash-continued lines into one command.
    const execStart = /^ExecStart=((?:.*\\\n)*.*)$/m.exec(unit)![1]!.replace(/\\\n\s*/g, '');
    expect(execStart).toMatch(/^\/usr\/bin\/podman run /);
    for (const flag of ['--device /dev/kfd', '--device /dev/dri', '--shm-size 16g', '-p ${HOST_PORT}:8000', '-v ${MODELS_DIR}:/models:ro', '-e MODEL_PATH', '-e SWAP_SPACE']) {
      expect(execStart).toContain(flag);
    }
    expect(execStart).toMatch(/\$\{IMAGE\}$/);
    expect(unit).toContain('EnvironmentFile=/etc/vllm-rocm/%i.env');
    for (const lane of ['orchestrator', 'coder', 'fast_rag']) {
      const env = readFileSync(`${opsDir}lanes/${lane}.env`, 'utf8');
      expect(env).toContain(`MODEL_PATH=/models/vllm/${lane}/bf16`);
      expect(env).toMatch(/^HOST_PORT=1143[456]$/m);
    }
  });
});
