import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tools } from '../../helpers/tools.js';
import { buildPythonClosure, canBuildPythonClosure, type PythonClosure } from '../../helpers/python-closure.js';
import { makeVllmStandInWheel } from '../../helpers/vllm-wheels.js';

/**
 * The test closure the recipe's end-to-end tests build images from must run with nothing but itself:
 * no /usr, no /lib64, no busybox. Checked on the host through store paths, and in a container whose
 * root file system holds only the closure and the stand-in vLLM's files.
 */
describe.runIf(canBuildPythonClosure() && tools('nix-build', 'readelf'))('the Debian-based Python closure', () => {
  let closure: PythonClosure;
  const work = mkdtempSync(join(tmpdir(), 'python-closure-'));

  beforeAll(() => {
    closure = buildPythonClosure();
  });
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it('runs Python and bash from their store paths, with loaders and libraries in the store', () => {
    const out = execFileSync(closure.interpreter, ['-c', 'import sys, json, http.server, hashlib, asyncio; print(sys.prefix); print(sys.path[-1])'], {
      encoding: 'utf8',
      env: {},
    });
    expect(out).toBe(`${closure.python}\n${closure.python}/lib/python3.11/site-packages\n`);
    // Running it (as root, who ignores the store's read-only modes) wrote no bytecode into the store.
    execFileSync('nix-store', ['--verify-path', closure.python], { stdio: 'pipe' });
    for (const binary of [closure.interpreter, `${closure.bash}/bin/bash`]) {
      const program = execFileSync('readelf', ['-lW', binary], { encoding: 'utf8' });
      expect(program).toContain(`[Requesting program interpreter: ${closure.glibc}/lib/ld-linux-x86-64.so.2]`);
      const dynamic = execFileSync('readelf', ['-dW', binary], { encoding: 'utf8' });
      const runpath = /\(RUNPATH\).*\[(.*)\]/.exec(dynamic)![1]!;
      expect(runpath.split(':').every((d) => d.startsWith('/nix/store/'))).toBe(true);
    }
    expect(execFileSync(`${closure.root}/bin/bash`, ['-c', 'echo $BASH_VERSION'], { encoding: 'utf8', env: {} })).toMatch(/^5\./);
  });

  it('holds only what it should: no zlib or gcc runtime in a lib directory unless asked for', () => {
    const names = closure.paths.map((p) => p.replace(/^\/nix\/store\/[0-9a-z]{32}-/, '').replace(/-[0-9][^-]*$/, '')).sort();
    expect(names).toEqual(['bash-debian', 'glibc-debian', 'python-runtime', 'python3', 'vllm-server']);
    expect(closure.zlib).toBeNull();
    const more = buildPythonClosure({ zlib: true, cxxRuntime: true });
    expect(more.paths).toContain(more.zlib);
    expect(more.paths).toContain(more.cxxRuntime);
    expect(more.python).toBe(closure.python); // the same python store path: options add paths, change none
  });

  it.runIf(tools('podman', 'runc'))('serves the stand-in vLLM through the wrapper in a container with nothing but the closure', () => {
    const rootfs = join(work, 'rootfs');
    const sitePackages = join(rootfs, 'opt/python/lib/python3.11/site-packages');
    mkdirSync(sitePackages, { recursive: true });
    mkdirSync(join(rootfs, 'tmp'));
    for (const path of closure.paths) cpSync(path, join(rootfs, path), { recursive: true, verbatimSymlinks: true });
    const wheel = makeVllmStandInWheel(work);
    execFileSync('python3', ['-c', 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])', wheel, sitePackages]);
    const conf = join(work, 'containers.conf');
    writeFileSync(conf, '[containers]\ndefault_ulimits = []\n');
    const r = closure.root;
    const script = [
      `${r}/bin/vllm-server &`,
      `for i in {1..40}; do ${r}/bin/python3 -c 'import urllib.request as u; u.urlopen("http://127.0.0.1:8000/health")' 2>/dev/null && break; sleep 0.25; done`,
      `${r}/bin/python3 -c 'import urllib.request as u; print(u.urlopen("http://127.0.0.1:8000/v1/models").read().decode())'`,
      'kill %1; wait',
    ].join('\n');
    const out = execFileSync(
      'podman',
      ['--runtime', 'runc', 'run', '--rm', '--network', 'none', '-e', 'PYTHONPATH=/opt/python/lib/python3.11/site-packages', '-e', 'EXTRA_VLLM_ARGS=--served-model-name orchestrator', '-e', 'SWAP_SPACE=4', '--rootfs', rootfs, `${r}/bin/bash`, '-c', script],
      { encoding: 'utf8', env: { ...process.env, CONTAINERS_CONF: conf }, timeout: 60_000, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const models = JSON.parse(out.trim().split('\n').pop()!);
    expect(models.data[0]).toMatchObject({ id: 'orchestrator', root: '/models/vllm/orchestrator/bf16', dtype: 'bfloat16', swap_space: 4, gpu_memory_utilization: 0.48, max_model_len: 32768, extra_args: [] });
  });
});
