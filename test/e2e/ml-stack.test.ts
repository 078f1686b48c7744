import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { cliOk } from '../helpers/cli.js';
import { podmanLoad, podmanRemove, podmanRun } from '../helpers/podman.js';
import { buildPythonClosure, canBuildPythonClosure, exportPythonClosure, type PythonClosure } from '../helpers/python-closure.js';
import { useScratchDirs } from '../helpers/scratch.js';
import { tools } from '../helpers/tools.js';
import { makeWheel } from '../helpers/wheels.js';

/**
 * Issue 14's stack as a user has it: torch (CPU), transformers, tokenizers, safetensors, fastapi,
 * uvicorn, numpy and everything they require (42 wheels from the machine's pip index, fetched once
 * with pip download: scripts/bench/ml-stack.mjs) plus a small server wheel of our own, on a Python 3.11
 * closure with gcc's runtime. One build, one container run: every native extension module the wheels'
 * RECORDs list imports, and the server answers a request.
 */
const ready = tools('nix-build', 'nix-store', 'patchelf', 'podman', 'runc', 'pip') && canBuildPythonClosure();
const scratch = useScratchDirs();

/** Run in the image: imports every extension module listed in a RECORD, then serves one request. */
const CONTAINER_SCRIPT = String.raw`
import http.client, importlib, json, os, re, sys, threading, time
modules = []
for site in [p for p in sys.path if p.endswith('site-packages') and os.path.isdir(p)]:
    for dist in sorted(d for d in os.listdir(site) if d.endswith('.dist-info')):
        with open(os.path.join(site, dist, 'RECORD')) as record:
            for line in record:
                m = re.fullmatch(r'((?:[A-Za-z_]\w*/)*[A-Za-z_]\w*)\.(?:cpython-311-x86_64-linux-gnu|abi3)\.so', line.rsplit(',', 2)[0])
                if m:
                    modules.append(m.group(1).replace('/', '.'))
failed = {}
for name in sorted(set(modules)):
    try:
        importlib.import_module(name)
    except BaseException as e:
        failed[name] = '%s: %s' % (type(e).__name__, e)
import uvicorn
server = uvicorn.Server(uvicorn.Config('tinyserve:app', host='127.0.0.1', port=8765, log_level='warning'))
thread = threading.Thread(target=server.run, daemon=True)
thread.start()
deadline = time.time() + 60
while not server.started and thread.is_alive() and time.time() < deadline:
    time.sleep(0.05)
connection = http.client.HTTPConnection('127.0.0.1', 8765, timeout=60)
connection.request('GET', '/complete?prompt=hello%20nix')
response = connection.getresponse()
body = json.loads(response.read())
server.should_exit = True
thread.join(10)
print(json.dumps({'modules': sorted(set(modules)), 'failed': failed, 'status': response.status, 'body': body}))
`;

/** The server: tokenizers (through transformers), torch, safetensors and numpy behind a FastAPI route. */
const SERVER = String.raw`
import numpy, torch
from fastapi import FastAPI
from safetensors.torch import load, save
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

_words = Tokenizer(models.WordLevel({'[UNK]': 0, 'hello': 1, 'nix': 2, 'world': 3}, unk_token='[UNK]'))
_words.pre_tokenizer = pre_tokenizers.Whitespace()
tokenizer = PreTrainedTokenizerFast(tokenizer_object=_words, unk_token='[UNK]')
app = FastAPI()

@app.get('/complete')
def complete(prompt: str):
    ids = tokenizer(prompt)['input_ids']
    tensor = load(save({'ids': torch.tensor(ids, dtype=torch.float32)}))['ids']
    return {'ids': ids, 'sum': float(numpy.sum(tensor.numpy())), 'completion': tokenizer.decode(ids + [3])}
`;

describe.runIf(ready)('the ML stack (torch, transformers, fastapi, …) in an image', () => {
  let dir: string;
  let python: PythonClosure;
  let closureFile: string;
  let wheels: string[];
  const loaded: string[] = [];

  beforeAll(async () => {
    dir = scratch('nix2oci-ml-stack-');
    // Fails in one line (what could not be downloaded, and pip's reason) when the index lacks them.
    const stack = (await import('../../scripts/bench/ml-stack.mjs' as string)) as { mlStackWheels: () => string[] };
    wheels = stack.mlStackWheels();
    python = buildPythonClosure({ zlib: true, cxxRuntime: true, stdlibLibs: true });
    closureFile = exportPythonClosure(python, join(dir, 'runtime')).closureFile;
    wheels.push(
      makeWheel({
        dir,
        name: 'tinyserve',
        version: '1.0',
        files: { 'tinyserve/__init__.py': SERVER },
        requires: ['fastapi', 'uvicorn', 'torch', 'numpy', 'safetensors', 'tokenizers', 'transformers'],
      }),
    );
  }, 900_000);
  afterAll(() => podmanRemove(...loaded));

  it('builds with every check on, imports every native module of the stack and serves a request', () => {
    const out = join(dir, 'image.tar');
    const started = performance.now();
    // The library and requirements checks run (no switch turns them off): the closure has what the wheels need.
    cliOk(['build-image', '-q', '--closure', closureFile, '--no-cache', '--compression', 'none', '--wheel', ...wheels, '--output', out]);
    const built = performance.now();
    const id = podmanLoad(out);
    loaded.push(id);
    const result = JSON.parse(podmanRun(id, [python.interpreter, '-c', CONTAINER_SCRIPT], [], { timeout: 600_000 })) as {
      modules: string[];
      failed: Record<string, string>;
      status: number;
      body: { ids: number[]; sum: number; completion: string };
    };
    console.info(`ML stack e2e: build ${((built - started) / 1000).toFixed(1)} s, load and run ${((performance.now() - built) / 1000).toFixed(1)} s`);

    expect(result.failed).toEqual({});
    // The native code of each package with any: torch, numpy, tokenizers, safetensors, pydantic_core, …
    const tops = new Set(result.modules.map((m) => m.split('.')[0]));
    for (const top of ['torch', 'numpy', 'tokenizers', 'safetensors', 'pydantic_core', 'yaml', 'markupsafe', 'regex', 'hf_xet']) expect(tops).toContain(top);
    expect(result.modules.length).toBeGreaterThan(20);
    expect(result.status).toBe(200);
    expect(result.body).toEqual({ ids: [1, 2], sum: 3, completion: 'hello nix world' });
  }, 900_000);
});
