import { describe, expect, it } from 'vitest';
import { formatProblemsFile, libraryFix, summarizeProblems, type Problem } from '../../../src/wheels/checks/problems.js';

const TORCH = 'torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl';
const NUMPY = 'numpy-2.1.0-cp311-cp311-manylinux_2_17_x86_64.whl';
const SCIPY = 'scipy-1.14.0-cp311-cp311-manylinux_2_17_x86_64.whl';

function missing(wheel: string, distribution: string, entry: string, library: string, severity: Problem['severity'] = 'error'): Problem {
  return {
    severity,
    check: 'libraries',
    kind: 'missing-library',
    message: `${wheel}: ${entry} needs ${library}: not found`,
    fix: libraryFix(library),
    wheel,
    distribution,
    entry,
    library,
  };
}

function foreign(wheel: string, entry: string): Problem {
  return {
    severity: 'warning',
    check: 'libraries',
    kind: 'foreign-interpreter',
    message: `${entry} (${wheel}) runs with /lib64/ld-linux-x86-64.so.2, which a Nix image does not have`,
    wheel,
    entry,
    interpreter: '/lib64/ld-linux-x86-64.so.2',
  };
}

describe('problems a user can act on', () => {
  it('groups missing libraries by their fix, sonames and wheels by how many files need them', () => {
    const problems = [
      ...['a', 'b', 'c'].map((f) => missing(TORCH, 'torch', `torch/lib/lib${f}.so`, 'libstdc++.so.6')),
      ...['a', 'b'].map((f) => missing(TORCH, 'torch', `torch/lib/lib${f}.so`, 'libgcc_s.so.1')),
      missing(NUMPY, 'numpy', 'numpy/core/_multiarray.so', 'libstdc++.so.6'),
      missing(SCIPY, 'scipy', 'scipy/linalg/_flapack.so', 'libgfortran.so.5'),
      missing(SCIPY, 'scipy', 'scipy/sparse/_x.so', 'libweird.so.3'),
      {
        severity: 'error',
        check: 'requirements',
        kind: 'unmet-requirement',
        message: 'unmet requirement: transformers 4.50.0 requires tokenizers>=0.21, not found',
        fix: 'add a wheel of tokenizers (--wheel), or a closure path with it in site-packages',
      } satisfies Problem,
    ];
    expect(summarizeProblems(problems).errors).toEqual([
      'unmet requirement: transformers 4.50.0 requires tokenizers>=0.21, not found — add a wheel of tokenizers (--wheel), or a closure path with it in site-packages',
      "libstdc++.so.6, libgcc_s.so.1: needed by 4 files in 2 wheels (torch, numpy) — add gcc's runtime libraries to the closure (stdenv.cc.cc.lib)",
      "libgfortran.so.5: needed by 1 file in 1 wheel (scipy) — add gfortran's runtime libraries to the closure (gfortran.cc.lib)",
      'libweird.so.3: needed by 1 file in 1 wheel (scipy) — add the store path that provides libweird.so.3 (in its lib/ directory) to the closure',
    ]);
  });

  it('never suggests a waiver first when a closure path is the fix; a host driver library is waived', () => {
    for (const library of ['libstdc++.so.6', 'libz.so.1', 'libnuma.so.1', 'libamdhip64.so.7', 'libfoo.so.1']) {
      expect(libraryFix(library)).toMatch(/^add /);
      expect(libraryFix(library)).not.toMatch(/waive/);
    }
    expect(libraryFix('libcuda.so.1')).toMatch(/host's GPU driver.*checks\.waiveLibraries/);
  });

  it('collapses the test executables that cannot run into one line per wheel, other executables stay', () => {
    const problems = [
      ...Array.from({ length: 124 }, (_, i) => foreign(TORCH, i % 2 ? `torch/test/test_${i}` : `torch/bin/tests/t${i}`)),
      foreign(TORCH, 'torch/bin/torch_shm_manager'),
      foreign(NUMPY, 'numpy/core/tests/_probe'),
    ];
    expect(summarizeProblems(problems)).toEqual({
      errors: [],
      warnings: [
        `torch/bin/torch_shm_manager (${TORCH}) runs with /lib64/ld-linux-x86-64.so.2, which a Nix image does not have`,
        `${TORCH}: 124 test executables (torch/bin/tests/, torch/test/) run with /lib64/ld-linux-x86-64.so.2, which the image does not have; no import runs them`,
        `${NUMPY}: a test executable (numpy/core/tests/) runs with /lib64/ld-linux-x86-64.so.2, which the image does not have; no import runs it`,
      ],
    });
  });

  it("collapses a wheel's programs that cannot start into one line per wheel, naming the first three", () => {
    const programs = ['torch/bin/FileStoreTest', 'torch/bin/HashStoreTest', 'torch/bin/protoc', 'torch/bin/torch_shm_manager'];
    const problems = [...programs.map((entry) => foreign(TORCH, entry)), foreign(NUMPY, 'numpy/bin/f2py-helper')];
    expect(summarizeProblems(problems).warnings).toEqual([
      `${TORCH}: 4 programs (torch/bin/FileStoreTest, torch/bin/HashStoreTest, torch/bin/protoc, …) run with /lib64/ld-linux-x86-64.so.2, which the image does not have: they cannot start in it`,
      `numpy/bin/f2py-helper (${NUMPY}) runs with /lib64/ld-linux-x86-64.so.2, which a Nix image does not have`,
    ]);
    // The problems file still has every one.
    expect(formatProblemsFile(problems).split('\n').filter((l) => l.startsWith('warning: '))).toHaveLength(5);
  });

  it('tells waived libraries and those of a library check turned off as grouped warnings', () => {
    const waived = { ...missing(TORCH, 'torch', 'torch/lib/libtorch_cuda.so', 'libcuda.so.1', 'warning'), waived: true, message: 'waived library: …' };
    const off = missing(NUMPY, 'numpy', 'numpy/x.so', 'libstdc++.so.6', 'warning');
    expect(summarizeProblems([waived, off]).warnings).toEqual([
      "libstdc++.so.6: needed by 1 file in 1 wheel (numpy) — add gcc's runtime libraries to the closure (stdenv.cc.cc.lib) (the library check is off)",
      'waived: libcuda.so.1: needed by 1 file in 1 wheel (torch)',
    ]);
  });

  it('writes every problem, one a line, after the summary', () => {
    const problems = [
      missing(TORCH, 'torch', 'torch/lib/liba.so', 'libstdc++.so.6'),
      missing(TORCH, 'torch', 'torch/lib/libb.so', 'libstdc++.so.6'),
      foreign(TORCH, 'torch/test/x'),
    ];
    expect(formatProblemsFile(problems).split('\n')).toEqual([
      '# 3 problems: 2 errors, 1 warning',
      "# error: libstdc++.so.6: needed by 2 files in 1 wheel (torch) — add gcc's runtime libraries to the closure (stdenv.cc.cc.lib)",
      `# warning: ${TORCH}: a test executable (torch/test/) runs with /lib64/ld-linux-x86-64.so.2, which the image does not have; no import runs it`,
      `error: ${TORCH}: torch/lib/liba.so needs libstdc++.so.6: not found — add gcc's runtime libraries to the closure (stdenv.cc.cc.lib)`,
      `error: ${TORCH}: torch/lib/libb.so needs libstdc++.so.6: not found — add gcc's runtime libraries to the closure (stdenv.cc.cc.lib)`,
      `warning: torch/test/x (${TORCH}) runs with /lib64/ld-linux-x86-64.so.2, which a Nix image does not have`,
      '',
    ]);
    expect(formatProblemsFile([])).toBe('# 0 problems: 0 errors, 0 warnings\n');
  });
});
