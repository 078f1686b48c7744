import { normalizeName } from './pep508.js';
import type { ClosureIndex } from './closure-index.js';
import type { ImagePython } from './python.js';
import type { Distribution } from './requirements.js';

/**
 * Known traps of GPU Python images, each a warning when the image lacks what it needs:
 *  - manylinux torch wheels bundle the ROCm/CUDA libraries but not libstdc++ or libgcc_s;
 *  - vLLM detects the ROCm platform by importing the `amdsmi` Python package;
 *  - Triton compiles launcher stubs at run time with a C compiler and Python's headers.
 * The checks look at what the image holds, not at what the wheels say, so they apply to any recipe;
 * a recipe may turn them off by name (`cxx-runtime`, `amdsmi`, `c-compiler`, `python-headers`).
 */

export type TrapName = 'cxx-runtime' | 'amdsmi' | 'c-compiler' | 'python-headers';

export interface TrapWarning {
  trap: TrapName;
  message: string;
}

const C_COMPILERS = ['cc', 'gcc', 'clang'];

export function checkTraps(options: {
  index: ClosureIndex;
  python: ImagePython;
  /** Every distribution the image holds (wheels and closure). */
  distributions: Distribution[];
  /** Files the wheels install (absolute image paths), for libraries a wheel brings itself. */
  wheelFiles?: Iterable<string>;
  skip?: TrapName[];
}): TrapWarning[] {
  const { index, python } = options;
  const skip = new Set(options.skip ?? []);
  const warnings: TrapWarning[] = [];
  const warn = (trap: TrapName, message: string) => {
    if (!skip.has(trap)) warnings.push({ trap, message });
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

  const dists = new Set(options.distributions.map((d) => normalizeName(d.name)));
  const importable = python.sitePackages.some((dir) => index.topLevelNames.get(dir)?.has('amdsmi'));
  const wheelProvides = [...(options.wheelFiles ?? [])].some((f) => /\/amdsmi(\/__init__\.py|\.py)$/.test(f));
  if (!dists.has('amdsmi') && !importable && !wheelProvides) {
    warn(
      'amdsmi',
      `the image's Python ${python.version} cannot import amdsmi: vLLM detects the ROCm platform through it (add rocmPackages.amdsmi built for this Python)`,
    );
  }

  const compilers = C_COMPILERS.filter((name) => index.binaries.has(name));
  if (compilers.length === 0) {
    warn('c-compiler', 'the closure has no C compiler (bin/cc, gcc or clang): Triton compiles its launcher stubs at run time');
  }

  const headers = index.pythonHeaders.some((h) => h.version === python.version);
  if (!headers) {
    warn(
      'python-headers',
      `the closure has no include/python${python.version}/Python.h: Triton compiles its launcher stubs against Python's headers`,
    );
  }
  return warnings;
}
