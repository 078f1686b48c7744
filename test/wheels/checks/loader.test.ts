import { describe, expect, it } from 'vitest';
import { checkLibraries } from '../../../src/wheels/checks/libraries.js';
import { checkWheels } from '../../../src/wheels/checks/index.js';
import { classifyGlibcDirs, searchesDir } from '../../../src/wheels/checks/loader.js';
import type { ClosureIndex } from '../../../src/wheels/checks/closure-index.js';
import type { ElfObject } from '../../../src/wheels/checks/elf-collector.js';
import { fakeClosure, fakeStorePath } from '../../recipe/fake-closure.js';

const nixGlibc = fakeStorePath('glibc-2.40-66');
const debianGlibc = fakeStorePath('glibc-debian-2.36');
const env = fakeStorePath('runtime-env');

/** Loader bytes as the linker lays out glibc's built-in search path: NUL-terminated strings in .rodata. */
function loader(...dirs: string[]): Buffer {
  return Buffer.concat([Buffer.from('\x7fELF\0\0\0junk\0'), ...dirs.map((d) => Buffer.from(`${d}\0`)), Buffer.from('/etc/ld.so.cache\0')]);
}

function index(dirs: Record<string, string[]>): ClosureIndex {
  return {
    pythons: [],
    sitePackages: [],
    distributionFiles: [],
    topLevelNames: new Map(),
    libraries: new Map(Object.entries(dirs).map(([d, names]) => [d, new Set(names)])),
    libraryDirs: Object.keys(dirs).sort(),
    binaries: new Map(),
    pythonHeaders: [],
  };
}

const GLIBC = ['ld-linux-x86-64.so.2', 'libc.so.6', 'libm.so.6', 'libpthread.so.0', 'librt.so.1'];

describe("the closure's loader", () => {
  it("tells a glibc that searches its own directory from one relocated into the store", () => {
    expect(searchesDir(loader(`${nixGlibc}/lib/`), `${nixGlibc}/lib`)).toBe(true);
    expect(searchesDir(loader('/lib/x86_64-linux-gnu/', '/usr/lib/x86_64-linux-gnu/', '/lib/', '/usr/lib/'), `${debianGlibc}/lib`)).toBe(false);
    // A longer directory that merely starts with it is not it.
    expect(searchesDir(loader(`${nixGlibc}/lib/gconv/`), `${nixGlibc}/lib`)).toBe(false);
  });

  it('reads each loader of the closure from its store path; a symlinked one (a buildEnv) is not judged', async () => {
    const closure = fakeClosure([nixGlibc, debianGlibc, env]);
    const files: Record<string, Buffer | null> = {
      [`${nixGlibc}/lib/ld-linux-x86-64.so.2`]: loader(`${nixGlibc}/lib/`),
      [`${debianGlibc}/lib/ld-linux-x86-64.so.2`]: loader('/lib/x86_64-linux-gnu/', '/usr/lib/'),
      [`${env}/lib/ld-linux-x86-64.so.2`]: null,
    };
    const read: string[] = [];
    const result = await classifyGlibcDirs(
      closure,
      index({ [`${nixGlibc}/lib`]: GLIBC, [`${debianGlibc}/lib`]: GLIBC, [`${env}/lib`]: GLIBC, [fakeStorePath('zlib') + '/lib']: ['libz.so.1'] }),
      async (info, path) => {
        read.push(`${info.path}/${path}`);
        return files[`${info.path}/${path}`] ?? null;
      },
    );
    expect(result).toEqual({ relocated: [`${debianGlibc}/lib`], searched: [`${nixGlibc}/lib`] });
    expect(read.sort()).toEqual(Object.keys(files).sort());
  });

  it("puts a relocated glibc's directory on LD_LIBRARY_PATH when a wheel's file needs one of its libraries", () => {
    const object: ElfObject = {
      wheel: '/w/rtext-1.0-cp311-cp311-linux_x86_64.whl',
      entry: 'rtext/_rt.so',
      imagePath: '/opt/python/lib/python3.11/site-packages/rtext/_rt.so',
      facts: { elfClass: 64, endian: 'little', type: 3, machine: 62, interpreter: null, dynamic: true, soname: null, needed: ['librt.so.1', 'libc.so.6'], rpath: null, runpath: null },
    };
    const closure = index({ [`${debianGlibc}/lib`]: GLIBC });
    const plain = checkLibraries({ objects: [object], wheelFiles: [], index: closure });
    expect(plain.unresolved).toEqual([]);
    expect(plain.ldLibraryPath).toEqual([]);
    const relocated = checkLibraries({ objects: [object], wheelFiles: [], index: closure, ldLibraryPath: ['/opt/x'], relocatedGlibcDirs: [`${debianGlibc}/lib`] });
    expect(relocated.unresolved).toEqual([]);
    expect(relocated.ldLibraryPath).toEqual(['/opt/x', `${debianGlibc}/lib`]);
    // A pure-Python wheel needs nothing from it.
    expect(checkLibraries({ objects: [], wheelFiles: [], index: closure, relocatedGlibcDirs: [`${debianGlibc}/lib`] }).ldLibraryPath).toEqual([]);
  });

  it('warns when the closure holds a glibc that searches itself beside the relocated one put on LD_LIBRARY_PATH', async () => {
    const python = fakeStorePath('python3-3.11.2');
    const closure = fakeClosure([nixGlibc, debianGlibc, python]);
    const files: Record<string, Buffer> = {
      [`${nixGlibc}/lib/ld-linux-x86-64.so.2`]: loader(`${nixGlibc}/lib/`),
      [`${debianGlibc}/lib/ld-linux-x86-64.so.2`]: loader('/lib/x86_64-linux-gnu/'),
    };
    const object: ElfObject = {
      wheel: '/w/rtext-1.0-cp311-cp311-linux_x86_64.whl',
      entry: 'rtext/_rt.so',
      imagePath: '/opt/python/lib/python3.11/site-packages/rtext/_rt.so',
      // Only the relocated glibc holds librt.so.1 here.
      facts: { elfClass: 64, endian: 'little', type: 3, machine: 62, interpreter: null, dynamic: true, soname: null, needed: ['librt.so.1'], rpath: null, runpath: null },
    };
    const report = await checkWheels({
      closure,
      index: index({ [`${nixGlibc}/lib`]: ['ld-linux-x86-64.so.2', 'libc.so.6'], [`${debianGlibc}/lib`]: GLIBC }),
      python: { storePath: python, interpreter: `${python}/bin/python3.11`, version: '3.11', fullVersion: '3.11.2', sitePackages: [] },
      wheels: [],
      wheelFiles: [],
      elfObjects: [object],
      readFile: async (info, path) => files[`${info.path}/${path}`] ?? null,
    });
    expect(report.errors).toEqual([]);
    expect(report.env.LD_LIBRARY_PATH).toEqual([`${debianGlibc}/lib`]);
    expect(report.problems.filter((p) => p.kind === 'mixed-glibc').map((p) => p.message)).toEqual([
      `the closure holds more than one glibc: ${debianGlibc}/lib (whose loader does not search it by default) goes on LD_LIBRARY_PATH, where programs of ${nixGlibc}/lib will find its libraries too`,
    ]);
  });
});
