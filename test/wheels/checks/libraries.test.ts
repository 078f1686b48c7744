import { describe, it, expect } from 'vitest';
import { checkLibraries, formatUnresolved } from '../../../src/wheels/checks/libraries.js';
import type { ClosureIndex } from '../../../src/wheels/checks/closure-index.js';
import type { ElfObject } from '../../../src/wheels/checks/elf-collector.js';
import type { ElfFacts } from '../../../src/wheels/checks/elf.js';

const site = '/nix/store/pppppppppppppppppppppppppppppppp-python3-3.11.9-env/lib/python3.11/site-packages';
const glibc = '/nix/store/gggggggggggggggggggggggggggggggg-glibc-2.40/lib';
const gcc = '/nix/store/cccccccccccccccccccccccccccccccc-gcc-14-lib/lib';
const zlib = '/nix/store/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-zlib-1.3/lib';
const zlibOther = '/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-zlib-ng-compat/lib';
const rocm = '/nix/store/rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr-rocm/lib';

function index(dirs: Record<string, string[]>): ClosureIndex {
  return {
    pythons: [],
    sitePackages: [],
    distributionFiles: [],
    topLevelNames: new Map(),
    libraries: new Map(Object.entries(dirs).map(([d, names]) => [d, new Set(names)])),
    libraryDirs: Object.keys(dirs).filter((d) => /\/lib(64)?$/.test(d)).sort(),
    binaries: new Map(),
    pythonHeaders: [],
  };
}

function elf(entry: string, facts: Partial<ElfFacts>, wheel = '/w/torch-2.9.1-cp311-cp311-linux_x86_64.whl'): ElfObject {
  return {
    wheel,
    entry,
    imagePath: `${site}/${entry}`,
    facts: { elfClass: 64, endian: 'little', type: 3, machine: 62, interpreter: null, dynamic: true, soname: null, needed: [], rpath: null, runpath: null, ...facts },
  };
}

const closure = index({
  [glibc]: ['ld-linux-x86-64.so.2', 'libc.so.6', 'libm.so.6', 'libpthread.so.0', 'libdl.so.2', 'librt.so.1'],
  [gcc]: ['libstdc++.so.6', 'libgcc_s.so.1'],
  [zlib]: ['libz.so.1', 'libz.so'],
  [zlibOther]: ['libz.so.1'],
  [rocm]: ['libamdhip64.so.7', 'librocblas.so.5'],
});

const torchFiles = ['torch/lib/libtorch.so', 'torch/lib/libc10.so', 'torch/lib/libamdhip64.so', 'torch/_C.cpython-311-x86_64-linux-gnu.so'].map(
  (f) => `${site}/${f}`,
);

describe('shared-library check', () => {
  it("resolves $ORIGIN RUNPATHs to the wheel's own files and system libraries to the closure", () => {
    const result = checkLibraries({
      objects: [
        elf('torch/_C.cpython-311-x86_64-linux-gnu.so', { needed: ['libtorch.so', 'libc.so.6'], runpath: ['$ORIGIN/lib'] }),
        elf('torch/lib/libtorch.so', { needed: ['libc10.so', 'libamdhip64.so', 'libstdc++.so.6', 'libgcc_s.so.1', 'libm.so.6', 'libpthread.so.0'], runpath: ['${ORIGIN}'] }),
      ],
      wheelFiles: torchFiles,
      index: closure,
    });
    expect(result.unresolved).toEqual([]);
    expect(result.ldLibraryPath).toEqual([gcc]); // glibc's directory is the loader's own: never added
    expect(result.added).toEqual([gcc]);
  });

  it('reports each unresolved library per file', () => {
    const result = checkLibraries({
      objects: [
        elf('vllm/_C.abi3.so', { needed: ['libamdhip64.so.7', 'libtorch.so', 'libnuma.so.1'] }, '/w/vllm-0.12.0-cp311-cp311-linux_x86_64.whl'),
        elf('torch/lib/libtorch.so', { needed: ['libstdc++.so.6'] }),
      ],
      wheelFiles: torchFiles,
      index: index({ [glibc]: ['ld-linux-x86-64.so.2', 'libc.so.6'] }),
    });
    expect(result.unresolved.map(formatUnresolved)).toEqual([
      'vllm/_C.abi3.so needs libamdhip64.so.7: not found',
      'vllm/_C.abi3.so needs libnuma.so.1: not found',
      'torch/lib/libtorch.so needs libstdc++.so.6: not found',
    ]);
  });

  it('adds a buildEnv lib directory that links glibc too, for the other libraries it holds', () => {
    const env = '/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-runtime-env/lib';
    const result = checkLibraries({
      objects: [elf('x/_x.so', { needed: ['libc.so.6', 'libstdc++.so.6'] })],
      wheelFiles: [],
      index: index({ [env]: ['ld-linux-x86-64.so.2', 'libc.so.6', 'libstdc++.so.6'], [glibc]: ['ld-linux-x86-64.so.2', 'libc.so.6'] }),
    });
    expect(result.unresolved).toEqual([]);
    expect(result.added).toEqual([env]);
  });

  it('finds glibc libraries only in the closure: the image has no other glibc', () => {
    const result = checkLibraries({ objects: [elf('x/_x.so', { needed: ['libc.so.6', 'librt.so.1'] })], wheelFiles: [], index: index({ [gcc]: ['libstdc++.so.6'] }) });
    expect(result.unresolved.map((u) => u.library)).toEqual(['libc.so.6', 'librt.so.1']);
  });

  it('uses DT_RPATH only when there is no DT_RUNPATH, as the loader does', () => {
    // A library outside any lib directory: only a path naming its directory finds it.
    const hidden = '/nix/store/hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh-vendor/opt/vendor';
    const withHidden = index({ [glibc]: ['ld-linux-x86-64.so.2', 'libc.so.6'], [hidden]: ['libvendor.so.3'] });
    const result = checkLibraries({
      objects: [
        elf('b/_a.so', { needed: ['libvendor.so.3'], rpath: [hidden] }),
        elf('b/_b.so', { needed: ['libvendor.so.3'], rpath: [hidden], runpath: ['/opt/none'] }),
        // $ORIGIN is the object's directory in the image: <site>/b, seven levels below /.
        elf('b/_c.so', { needed: ['libvendor.so.3'], runpath: ['$ORIGIN/' + '../'.repeat(7) + hidden.slice(1)] }),
      ],
      wheelFiles: [],
      index: withHidden,
    });
    expect(result.unresolved.map((u) => u.entry)).toEqual(['b/_b.so']);
    expect(result.added).toEqual([]);
  });

  it('adds closure directories in a stable order after the recipe’s LD_LIBRARY_PATH', () => {
    const objects = [
      elf('torch/lib/libtorch.so', { needed: ['libz.so.1', 'libstdc++.so.6', 'librocblas.so.5'] }),
      elf('torch/lib/libc10.so', { needed: ['libgcc_s.so.1'] }),
    ];
    const result = checkLibraries({ objects, wheelFiles: torchFiles, index: closure, ldLibraryPath: [rocm, '/opt/rocm/lib'] });
    // libz.so.1 is in two closure directories: the first by path wins, every run.
    expect(result.added).toEqual([zlibOther, gcc].sort());
    expect(result.ldLibraryPath).toEqual([rocm, '/opt/rocm/lib', ...[zlibOther, gcc].sort()]);
    const reversed = checkLibraries({ objects: [...objects].reverse(), wheelFiles: [...torchFiles].reverse(), index: closure, ldLibraryPath: [rocm, '/opt/rocm/lib'] });
    expect(reversed.ldLibraryPath).toEqual(result.ldLibraryPath);
  });

  it('warns about foreign machines and interpreters a Nix image lacks, and skips static files', () => {
    const result = checkLibraries({
      objects: [
        elf('bin/tool', { machine: 183, needed: ['libfoo.so'] }),
        elf('triton/backends/amd/bin/ld.lld', { type: 2, interpreter: '/lib64/ld-linux-x86-64.so.2', needed: ['libc.so.6'] }),
        elf('triton/static', { dynamic: false }),
      ],
      wheelFiles: [],
      index: closure,
    });
    expect(result.unresolved).toEqual([]);
    expect(result.warnings.map((w) => w.message)).toEqual([
      'bin/tool (torch-2.9.1-cp311-cp311-linux_x86_64.whl) is built for ELF machine 183, not 62',
      'triton/backends/amd/bin/ld.lld (torch-2.9.1-cp311-cp311-linux_x86_64.whl) runs with /lib64/ld-linux-x86-64.so.2, which a Nix image does not have',
    ]);
    expect(result.warnings.map(({ entry, interpreter, machine }) => ({ entry, interpreter, machine }))).toEqual([
      { entry: 'bin/tool', interpreter: undefined, machine: 183 },
      { entry: 'triton/backends/amd/bin/ld.lld', interpreter: '/lib64/ld-linux-x86-64.so.2', machine: undefined },
    ]);
  });

  it('resolves absolute NEEDED paths against the closure', () => {
    const result = checkLibraries({
      objects: [elf('x/_x.so', { needed: [`${zlib}/libz.so.1`, '/usr/lib/libfoo.so'] })],
      wheelFiles: [],
      index: closure,
    });
    expect(result.unresolved.map((u) => u.library)).toEqual(['/usr/lib/libfoo.so']);
  });
});
