import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeWheel } from './wheels.js';

/**
 * Wheels for the vLLM ROCm recipe's tests, on top of makeWheel:
 *  - a stand-in `vllm` (cp311-cp311-linux_x86_64) whose `vllm.entrypoints.openai.api_server`
 *    takes vLLM's arguments and serves `/health` and `/v1/models` with the stdlib;
 *  - `zlibext`, a real CPython extension module built with the machine's gcc that links libz.so.1;
 *  - Debian's real pip and setuptools wheels (python3-pip-whl).
 */

export const VLLM_VERSION = '0.12.0+rocm711';

/** The stand-in server: parses the wrapper's arguments, answers as vLLM's OpenAI server does. */
const API_SERVER = String.raw`"""Stand-in for vLLM's OpenAI-compatible server: /health and /v1/models only."""
import argparse
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def parse_args(argv):
    p = argparse.ArgumentParser(prog="vllm.entrypoints.openai.api_server")
    p.add_argument("--model", required=True)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--pipeline-parallel-size", type=int, default=1)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--swap-space", type=float, default=None)
    # Real vLLM takes many more; keep them so EXTRA_VLLM_ARGS can be shown in /v1/models.
    args, extra = p.parse_known_args(argv)
    args.extra = extra
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    model_id = args.served_model_name or args.model
    models = {
        "object": "list",
        "data": [{
            "id": model_id,
            "object": "model",
            "owned_by": "vllm",
            "root": args.model,
            "max_model_len": args.max_model_len,
            "gpu_memory_utilization": args.gpu_memory_utilization,
            "dtype": args.dtype,
            "swap_space": args.swap_space,
            "extra_args": args.extra,
        }],
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/health":
                self._send(200, b"", "text/plain")
            elif self.path == "/v1/models":
                self._send(200, json.dumps(models).encode(), "application/json")
            else:
                self._send(404, b'{"detail":"Not Found"}', "application/json")

        def _send(self, status, body, kind):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *a):
            sys.stderr.write("api_server: " + (fmt % a) + "\n")

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("INFO: serving %s on http://%s:%d" % (model_id, args.host, args.port), flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
`;

/**
 * The stand-in vLLM wheel. It requires pip and setuptools (Debian's wheels satisfy them) plus a
 * requirement whose marker excludes Linux, so the requirements check has something real to check.
 * `python` picks its tag: cp311 (default) or cp312, as vLLM's ROCm wheels are.
 */
export function makeVllmStandInWheel(dir: string, options: { requires?: string[]; python?: '3.11' | '3.12' } = {}): string {
  const cp = `cp${(options.python ?? '3.11').replace('.', '')}`;
  return makeWheel({
    dir,
    name: 'vllm',
    version: VLLM_VERSION,
    tag: `${cp}-${cp}-linux_x86_64`,
    rootIsPurelib: false,
    requiresPython: '>=3.10,<3.14',
    requires: options.requires ?? ['pip>=20', 'setuptools>=60; python_version >= "3.8"', 'pywin32>=300; sys_platform == "win32"'],
    files: {
      'vllm/__init__.py': `__version__ = "${VLLM_VERSION}"\n`,
      'vllm/entrypoints/__init__.py': '',
      'vllm/entrypoints/openai/__init__.py': '',
      'vllm/entrypoints/openai/api_server.py': API_SERVER,
    },
  });
}

const ZLIB_EXTENSION_C = String.raw`
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <zlib.h>

static PyObject *crc(PyObject *self, PyObject *args) {
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data)) return NULL;
    unsigned long value = crc32(0L, (const Bytef *)data.buf, (uInt)data.len);
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(value);
}

static PyObject *version(PyObject *self, PyObject *args) { return PyUnicode_FromString(zlibVersion()); }

static PyMethodDef methods[] = {
    {"crc32", crc, METH_VARARGS, "zlib's crc32 of bytes"},
    {"zlib_version", version, METH_NOARGS, "the loaded zlib's version"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_zlibext", NULL, -1, methods};

PyMODINIT_FUNC PyInit__zlibext(void) { return PyModule_Create(&module); }
`;

export const ZLIB_EXTENSION_ENTRY = 'zlibext/_zlibext.cpython-311-x86_64-linux-gnu.so';

/** A wheel holding a real extension module that links libz.so.1 (and nothing but libc besides). */
export function makeZlibExtensionWheel(dir: string): string {
  const build = mkdtempSync(join(tmpdir(), 'zlibext-'));
  try {
    writeFileSync(join(build, 'zlibext.c'), ZLIB_EXTENSION_C);
    const so = join(build, '_zlibext.so');
    execFileSync('gcc', ['-shared', '-fPIC', '-O2', '-I/usr/include/python3.11', '-o', so, join(build, 'zlibext.c'), '-lz'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    return makeWheel({
      dir,
      name: 'zlibext',
      version: '1.0',
      tag: 'cp311-cp311-linux_x86_64',
      rootIsPurelib: false,
      files: {
        'zlibext/__init__.py': 'from ._zlibext import crc32, zlib_version\n',
        [ZLIB_EXTENSION_ENTRY]: { content: readFileSync(so), mode: 0o755 },
      },
    });
  } finally {
    rmSync(build, { recursive: true, force: true });
  }
}

/** Debian's pip and setuptools wheels (python3-pip-whl), as real third-party wheels. */
export function debianWheels(): { pip: string; setuptools: string } {
  const dir = '/usr/share/python-wheels';
  const files = readdirSync(dir);
  const find = (prefix: string) => {
    const name = files.find((f) => f.startsWith(`${prefix}-`) && f.endsWith('.whl'));
    if (!name) throw new Error(`no ${prefix} wheel in ${dir} (install python3-pip-whl)`);
    return join(dir, name);
  };
  return { pip: find('pip'), setuptools: find('setuptools') };
}
