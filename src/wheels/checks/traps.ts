import { normalizeName } from './pep508.js';
import type { ClosureIndex } from './closure-index.js';
import type { ImagePython } from './python.js';
import type { Distribution } from './requirements.js';

/**
 * Known traps of GPU Python images, each a warning when the image lacks what it needs:
 *  - `cxx-runtime`: manylinux torch wheels bundle the ROCm/CUDA libraries but not libstdc++ or libgcc_s;
 *  - `amdsmi`: vLLM on ROCm detects the platform by importing the `amdsmi` Python package;
 *  - `c-compiler`, `python-headers`: Triton compiles launcher stubs at run time with a C compiler and
 *    Python's headers;
 *  - `aiter`: `VLLM_ROCM_USE_AITER=1` does nothing without the `aiter` package, and AITER is built for
 *    gfx942/gfx950 only (vLLM's docker/Dockerfile.rocm_base: `AITER_ROCM_ARCH=gfx942;gfx950`).
 * The checks look at what the image holds, not at what the wheels say. `amdsmi` warns only when the
 * image has vLLM and shows ROCm; `c-compiler` and `python-headers` only when it has vLLM or Triton
 * (`vllm`, `triton`, `pytorch-triton-rocm`), so an image of other wheels hears nothing of them. A recipe
 * turns a trap off by name: `"checks": {"skipTraps": ["amdsmi"]}`.
 */

export const TRAP_NAMES = ['cxx-runtime', 'amdsmi', 'c-compiler', 'python-headers', 'aiter'] as const;
export type TrapName = (typeof TRAP_NAMES)[number];

export interface TrapWarning {
  trap: TrapName;
  message: string;
}

const C_COMPILERS = ['cc', 'gcc', 'clang'];
/** Distributions that compile Triton launcher stubs at run time (vLLM needs Triton on every GPU). */
const TRITON_USERS = ['vllm', 'triton', 'pytorch-triton-rocm'];
/** Environment variables that say the image runs on ROCm. */
const ROCM_ENV = ['ROCM_HOME', 'ROCM_PATH', 'HIP_VISIBLE_DEVICES'];

export function checkTraps(options: {
  index: ClosureIndex;
  python: ImagePython;
  /** Every distribution the image holds (wheels and closure). */
  distributions: Distribution[];
  /** Files the wheels install (absolute image paths), for modules a wheel brings itself. */
  wheelFiles?: Iterable<string>;
  /** The image's environment (the recipe's `env`). */
  env?: Record<string, string>;
  skip?: readonly TrapName[];
}): TrapWarning[] {
  const { index, python } = options;
  const env = options.env ?? {};
  const skip = new Set(options.skip ?? []);
  const wheelFiles = [...(options.wheelFiles ?? [])];
  const warnings: TrapWarning[] = [];
  const warn = (trap: TrapName, message: string) => {
    if (!skip.has(trap)) warnings.push({ trap, message: `${message} [checks.skipTraps: "${trap}"]` });
  };

  const closureLibraries = new Set<string>();
  for (const dir of index.libraryDirs) for (const name of index.libraries.get(dir) ?? []) closureLibraries.add(name);
  const missingRuntime = ['libstdc++.so.6', 'libgcc_s.so.1'].filter((lib) => !closureLibraries.has(lib));
  if (missingRuntime.length > 0) {
    warn(
      'cxx-runtime',
      `the closure has no ${missingRuntime.join(' or ')} in a lib directory: manylinux wheels (torch) bundle GPU libraries but expect these from the system (add gcc's runtime, e.g. stdenv.cc.cc.lib)`,
    );
  }

  const byName = new Map<string, Distribution>();
  for (const d of options.distributions) if (!byName.has(normalizeName(d.name))) byName.set(normalizeName(d.name), d);
  const has = (module: string) =>
    byName.has(module) ||
    python.sitePackages.some((dir) => index.topLevelNames.get(dir)?.has(module)) ||
    wheelFiles.some((f) => f.endsWith(`/${module}/__init__.py`) || f.endsWith(`/${module}.py`));
  const named = (d: Distribution) => `${d.name} ${d.version}`;

  const vllm = byName.get('vllm');
  const rocm =
    ROCM_ENV.some((name) => env[name] !== undefined && env[name] !== '') ||
    byName.has('pytorch-triton-rocm') ||
    [...byName.values()].some((d) => /\+rocm/i.test(d.version));
  if (vllm && rocm && !has('amdsmi')) {
    warn(
      'amdsmi',
      `the image's Python ${python.version} cannot import amdsmi: ${named(vllm)} detects the ROCm platform through it (add rocmPackages.amdsmi built for this Python)`,
    );
  }

  const triton = TRITON_USERS.map((name) => byName.get(name)).find((d) => d !== undefined);
  if (triton) {
    const compilers = C_COMPILERS.filter((name) => index.binaries.has(name));
    if (compilers.length === 0) {
      warn(
        'c-compiler',
        `the closure has no C compiler (bin/cc, gcc or clang): Triton, which ${named(triton)} uses, compiles its launcher stubs at run time`,
      );
    }
    const headers = index.pythonHeaders.some((h) => h.version === python.version);
    if (!headers) {
      warn(
        'python-headers',
        `the closure has no include/python${python.version}/Python.h: Triton, which ${named(triton)} uses, compiles its launcher stubs against Python's headers`,
      );
    }
  }

  const aiter = env.VLLM_ROCM_USE_AITER;
  if (aiter !== undefined && ['1', 'true'].includes(aiter.toLowerCase())) {
    const reasons: string[] = [];
    if (!has('aiter')) reasons.push('the image has no aiter module, so vLLM ignores it');
    const target = gfx1Target(env);
    if (target) reasons.push(`AITER is built for gfx942/gfx950 only and the image targets ${target}`);
    if (reasons.length > 0) {
      warn('aiter', `VLLM_ROCM_USE_AITER=${aiter} does nothing here: ${reasons.join('; ')} (set VLLM_ROCM_USE_AITER=0)`);
    }
  }
  return warnings;
}

/**
 * The gfx10/11/12 (RDNA) target the environment names, or null: `PYTORCH_ROCM_ARCH` listing only
 * gfx1xxx targets, or `HSA_OVERRIDE_GFX_VERSION` of 10 or more (11.0.0 is gfx1100).
 */
function gfx1Target(env: Record<string, string>): string | null {
  const arch = (env.PYTORCH_ROCM_ARCH ?? '')
    .split(/[;,\s]+/)
    .filter(Boolean)
    .map((a) => a.toLowerCase());
  if (arch.length > 0 && arch.every((a) => /^gfx1\d{3}$/.test(a))) return `PYTORCH_ROCM_ARCH=${env.PYTORCH_ROCM_ARCH}`;
  const override = /^(\d+)\.\d+\.\d+$/.exec(env.HSA_OVERRIDE_GFX_VERSION ?? '');
  if (override && Number(override[1]) >= 10) return `HSA_OVERRIDE_GFX_VERSION=${env.HSA_OVERRIDE_GFX_VERSION}`;
  return null;
}
