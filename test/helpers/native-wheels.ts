import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Real ELF files for wheels, compiled with the machine's gcc: shared objects and executables whose
 * DT_NEEDED lists exactly the libraries asked for (linked by soname with --no-as-needed, as a
 * manylinux build against an older glibc lists libpthread.so.0 and librt.so.1).
 */
export interface ElfSpec {
  /** Sonames to list in DT_NEEDED, e.g. `libstdc++.so.6`, `librt.so.1`. */
  needed?: string[];
  /** An executable (with the host's /lib64 loader as PT_INTERP) instead of a shared object. */
  executable?: boolean;
  /** C source; default a function (or main) that does nothing. */
  source?: string;
  /** Compile against Python 3.11's headers (for an extension module). */
  python?: boolean;
}

export function compileElf(spec: ElfSpec = {}): Buffer {
  const dir = mkdtempSync(join(tmpdir(), 'nix2oci-elf-'));
  try {
    const source = spec.source ?? (spec.executable ? 'int main(void) { return 0; }\n' : 'int nothing(void) { return 0; }\n');
    writeFileSync(join(dir, 'x.c'), source);
    const out = join(dir, 'x.out');
    execFileSync(
      'gcc',
      [
        ...(spec.executable ? [] : ['-shared', '-fPIC']),
        ...(spec.python ? ['-I/usr/include/python3.11'] : []),
        '-O2',
        '-o',
        out,
        join(dir, 'x.c'),
        '-Wl,--no-as-needed',
        ...(spec.needed ?? []).map((soname) => `-l:${soname}`),
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    return readFileSync(out);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A CPython 3.11 extension module `name` whose `ping()` returns "pong", linking `needed` too. */
export function compileExtension(name: string, needed: string[] = []): Buffer {
  const source = String.raw`
#define PY_SSIZE_T_CLEAN
#include <Python.h>
static PyObject *ping(PyObject *self, PyObject *args) { return PyUnicode_FromString("pong"); }
static PyMethodDef methods[] = {{"ping", ping, METH_NOARGS, "pong"}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "${name}", NULL, -1, methods};
PyMODINIT_FUNC PyInit_${name}(void) { return PyModule_Create(&module); }
`;
  return compileElf({ source, needed, python: true });
}
