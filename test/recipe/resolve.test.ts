import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildConfig } from '../../src/model/config.js';
import { resolveRecipe, toImageConfigSpec } from '../../src/recipe/resolve.js';
import type { Recipe } from '../../src/recipe/schema.js';
import { matchStorePaths, packageName } from '../../src/recipe/store-names.js';
import { storePathName } from '../../src/nix/store-path.js';
import { UserError } from '../../src/util/errors.js';
import { fakeClosure, fakeStorePath } from './fake-closure.js';
import { userErrorOf } from '../helpers/errors.js';

const python = fakeStorePath('python3-3.11.9');
const server = fakeStorePath('vllm-server');
const busybox = fakeStorePath('busybox-demo');
const bash = fakeStorePath('bash-5.2p26');
const bashMan = fakeStorePath('bash-5.2p26-man');
const gccLib = fakeStorePath('gcc-13.2.0-lib');
const gccLibgcc = fakeStorePath('gcc-13.2.0-libgcc');
const glibcA = fakeStorePath('glibc-2.39', 'a');
const glibcB = fakeStorePath('glibc-2.39', 'b');
const pythonPackages = fakeStorePath('python3.11-numpy-1.26.4');
const closure = fakeClosure([python, server, busybox, bash, bashMan, gccLib, gccLibgcc, glibcA, glibcB, pythonPackages]);

describe('store path names', () => {
  it('splits names like Nix', () => {
    expect(storePathName(python)).toBe('python3-3.11.9');
    expect(packageName('python3-3.11.9')).toBe('python3');
    expect(packageName('rocm-core-6.0.2')).toBe('rocm-core');
    expect(packageName('python3.11-numpy-1.26.4')).toBe('python3.11-numpy');
    expect(packageName('demo-app')).toBe('demo-app');
  });

  it('matches an exact name first, else name-<version> with a digit after the dash', () => {
    const paths = [...closure.paths.keys()];
    expect(matchStorePaths(paths, 'python3')).toEqual([python]);
    expect(matchStorePaths(paths, 'python3-3.11.9')).toEqual([python]);
    expect(matchStorePaths(paths, 'vllm-server')).toEqual([server]);
    expect(matchStorePaths(paths, 'vllm')).toEqual([]);
    expect(matchStorePaths(paths, 'python3.11-numpy')).toEqual([pythonPackages]);
    expect(matchStorePaths(paths, 'bash')).toEqual([bash, bashMan].sort());
    expect(matchStorePaths(paths, 'bash-5.2p26')).toEqual([bash]);
    const exactAndVersioned = [fakeStorePath('tool'), fakeStorePath('tool-1.0')];
    expect(matchStorePaths(exactAndVersioned, 'tool')).toEqual([exactAndVersioned[0]]);
  });
});

describe('resolveRecipe', () => {
  it('expands {{name}} in entrypoint, cmd, env values, workingDir, labels and the healthcheck', () => {
    const recipe: Recipe = {
      entrypoint: ['{{vllm-server}}/bin/vllm-server'],
      cmd: ['--python', '{{ python3 }}/bin/python3.11'],
      env: { PYTHON: '{{python3}}/bin/python3', PATH: '{{busybox-demo}}/bin:{{python3}}/bin', PLAIN: '{ {not} }' },
      workingDir: '{{busybox-demo}}',
      labels: { server: '{{vllm-server}}' },
      healthcheck: { test: ['CMD', '{{busybox-demo}}/bin/wget', '-q', 'http://localhost:8000/health'] },
    };
    const resolved = resolveRecipe(recipe, closure, 'image.json');
    expect(resolved.entrypoint).toEqual([`${server}/bin/vllm-server`]);
    expect(resolved.cmd).toEqual(['--python', `${python}/bin/python3.11`]);
    expect(resolved.env).toEqual({ PYTHON: `${python}/bin/python3`, PATH: `${busybox}/bin:${python}/bin`, PLAIN: '{ {not} }' });
    expect(resolved.workingDir).toBe(busybox);
    expect(resolved.labels).toEqual({ server });
    expect(resolved.healthcheck?.test).toEqual(['CMD', `${busybox}/bin/wget`, '-q', 'http://localhost:8000/health']);
    expect(recipe.entrypoint).toEqual(['{{vllm-server}}/bin/vllm-server']);
  });

  it('names the key and lists the candidates when a name is ambiguous', () => {
    expect(userErrorOf(() => resolveRecipe({ env: { SH: '{{bash}}/bin/sh' } }, closure, 'image.json'))).toBe(
      `image.json: /env/SH: 'bash' names 2 store paths (${[bash, bashMan].sort().join(', ')}); use a full name or store path`,
    );
    expect(userErrorOf(() => resolveRecipe({ copyToRoot: ['glibc'] }, closure, 'image.json'))).toContain(
      `image.json: /copyToRoot/0: 'glibc' names 2 store paths (${[glibcA, glibcB].sort().join(', ')})`,
    );
    expect(resolveRecipe({ cmd: ['{{bash-5.2p26}}/bin/bash'] }, closure).cmd).toEqual([`${bash}/bin/bash`]);
  });

  it('names the key and suggests a close name when none matches', () => {
    expect(userErrorOf(() => resolveRecipe({ entrypoint: ['{{vllm-servr}}/bin/x'] }, closure, 'image.json'))).toBe(
      "image.json: /entrypoint/0: no store path in the closure is named 'vllm-servr' (did you mean 'vllm-server'?)",
    );
    expect(userErrorOf(() => resolveRecipe({ labels: { 'a/b': '{{nothing-like-it}}' } }, closure))).toBe(
      "recipe: /labels/a~1b: no store path in the closure is named 'nothing-like-it'",
    );
    expect(userErrorOf(() => resolveRecipe({ cmd: ['{{py thon}}'] }, closure))).toBe(
      'recipe: /cmd/0: {{py thon}} is not a store path name (letters, digits and + . _ ? = -)',
    );
    expect(userErrorOf(() => resolveRecipe({ cmd: ['{{python3'] }, closure))).toBe(
      `recipe: /cmd/0: unbalanced '{{' in "{{python3" (a reference is {{name}})`,
    );
  });

  it('refuses literal store paths the closure lacks', () => {
    const stale = fakeStorePath('vllm-server', 'old build');
    expect(userErrorOf(() => resolveRecipe({ entrypoint: [`${stale}/bin/vllm-server`] }, closure, 'image.json'))).toBe(
      `image.json: /entrypoint/0: ${stale} is not in the closure (the closure has ${server}; or write {{vllm-server}})`,
    );
    expect(resolveRecipe({ entrypoint: [`${server}/bin/vllm-server`] }, closure).entrypoint).toEqual([`${server}/bin/vllm-server`]);
  });

  it('resolves copyToRoot by name, {{name}} or store path, dropping repeats, and refuses paths outside the closure', () => {
    const resolved = resolveRecipe({ copyToRoot: ['busybox-demo', `{{python3}}`, busybox, bash] }, closure);
    expect(resolved.root.copyToRoot).toEqual([busybox, python, bash]);
    expect(userErrorOf(() => resolveRecipe({ copyToRoot: [`${busybox}/bin`] }, closure))).toBe(
      `recipe: /copyToRoot/0: ${busybox}/bin is inside a store path; give the store path ${busybox}`,
    );
    expect(userErrorOf(() => resolveRecipe({ copyToRoot: ['/opt/thing'] }, closure))).toBe(
      'recipe: /copyToRoot/0: /opt/thing is not a store path of the closure',
    );
  });

  it('fills in defaults: tags, root users and directories, python, checks, wheels relative to the recipe', () => {
    const resolved = resolveRecipe(
      {
        name: 'nix2oci/demo',
        users: [
          { name: 'app', uid: 1000, gid: 1000 },
          { name: 'worker', uid: 1001, gid: 1000 },
          { name: 'gpu', uid: 1002, gid: 44, group: 'video', home: '/srv/gpu', shell: '/bin/bash' },
          { name: 'admin', uid: 1003, gid: 0 },
        ],
        directories: [{ path: '/models' }, { path: '/scratch/', mode: '1777' }],
        wheels: ['wheels/a.whl', '/abs/b.whl'],
        wheelLock: 'wheels.lock',
        python: { interpreter: 'python3' },
      },
      closure,
      'layers/vllm/image.json',
    );
    expect(resolved.tags).toEqual(['nix2oci/demo:latest']);
    expect(resolved.root.users).toEqual([
      { name: 'app', uid: 1000, gid: 1000, group: 'app', home: '/home/app', shell: '/bin/sh' },
      { name: 'worker', uid: 1001, gid: 1000, group: 'app', home: '/home/worker', shell: '/bin/sh' },
      { name: 'gpu', uid: 1002, gid: 44, group: 'video', home: '/srv/gpu', shell: '/bin/bash' },
      { name: 'admin', uid: 1003, gid: 0, group: 'root', home: '/home/admin', shell: '/bin/sh' },
    ]);
    expect(resolved.root.directories).toEqual([
      { path: '/models', mode: 0o755 },
      { path: '/scratch', mode: 0o1777 },
    ]);
    expect(resolved.wheels).toEqual([resolve('layers/vllm/wheels/a.whl'), '/abs/b.whl']);
    expect(resolved.python).toEqual({ prefix: '/opt/python', interpreter: python });
    expect(resolved.wheelLock).toBe(resolve('layers/vllm/wheels.lock'));
    expect(resolved.checks).toEqual({ waiveRequirements: [], waiveLibraries: [], skipRequirements: false, skipLibraries: false, skipTraps: [] });

    const bare = resolveRecipe({ wheels: ['x.whl'] }, closure);
    expect(bare.tags).toEqual([]);
    expect(bare.wheels).toEqual([join(process.cwd(), 'x.whl')]);
    expect(bare.root).toEqual({ copyToRoot: [], users: [], directories: [], lowerLayerDirectories: ['/opt/python'] });
    expect(bare.python).toEqual({ prefix: '/opt/python' });
    expect(bare.wheelLock).toBeUndefined();
    expect(resolveRecipe({ checks: { skipLibraries: true } }, closure).checks).toMatchObject({ skipRequirements: false, skipLibraries: true });
    expect(resolveRecipe({ name: 'a/b', tag: 'v2' }, closure).tags).toEqual(['a/b:v2']);
    expect(resolveRecipe({ checks: { skipTraps: ['amdsmi'], waiveLibraries: ['libcuda.so.1'] } }, closure).checks).toEqual({
      waiveRequirements: [],
      waiveLibraries: ['libcuda.so.1'],
      skipRequirements: false,
      skipLibraries: false,
      skipTraps: ['amdsmi'],
    });
  });

  it('takes python.interpreter as a name, a store path or a file path with a reference', () => {
    expect(resolveRecipe({ python: { interpreter: `${python}/bin/python3.11` } }, closure).python.interpreter).toBe(`${python}/bin/python3.11`);
    expect(resolveRecipe({ python: { interpreter: '{{python3}}/bin/python3.11', prefix: '/usr/local' } }, closure).python).toEqual({
      prefix: '/usr/local',
      interpreter: `${python}/bin/python3.11`,
    });
    expect(userErrorOf(() => resolveRecipe({ python: { interpreter: 'python2' } }, closure, 'r.json'))).toBe(
      "r.json: /python/interpreter: no store path in the closure is named 'python2' (did you mean 'python3'?)",
    );
  });
});

describe('toImageConfigSpec', () => {
  it('makes the config spec: env sorted by name, defaults amd64/linux, empty lists as none', () => {
    const resolved = resolveRecipe(
      {
        entrypoint: ['{{vllm-server}}/bin/vllm-server'],
        cmd: [],
        env: { PORT: '8000', A_FIRST: '1', PATH: '/bin' },
        ports: ['8000/tcp'],
        volumes: ['/models'],
        labels: { x: 'y' },
        user: '1000:1000',
        workingDir: '/srv',
        stopSignal: 'SIGINT',
        healthcheck: { test: ['CMD-SHELL', 'true'], interval: '30s', retries: 3 },
      },
      closure,
    );
    expect(toImageConfigSpec(resolved)).toEqual({
      architecture: 'amd64',
      os: 'linux',
      env: ['A_FIRST=1', 'PATH=/bin', 'PORT=8000'],
      entrypoint: [`${server}/bin/vllm-server`],
      exposedPorts: ['8000/tcp'],
      volumes: ['/models'],
      labels: { x: 'y' },
      user: '1000:1000',
      workingDir: '/srv',
      stopSignal: 'SIGINT',
      healthcheck: { test: ['CMD-SHELL', 'true'], interval: '30s', retries: 3 },
    });
    expect(toImageConfigSpec(resolveRecipe({ architecture: 'arm64', variant: 'v8' }, closure))).toEqual({
      architecture: 'arm64',
      variant: 'v8',
      os: 'linux',
      env: [],
      exposedPorts: [],
      volumes: [],
      labels: {},
    });
  });

  it('appends search paths from other stages to the recipe’s, without repeats', () => {
    const resolved = resolveRecipe({ env: { LD_LIBRARY_PATH: '/opt/rocm/lib:/a', PATH: '/bin' } }, closure);
    const spec = toImageConfigSpec(resolved, {
      LD_LIBRARY_PATH: ['/a', '/b'],
      PYTHONPATH: '/opt/python/lib/python3.11/site-packages',
      EMPTY: [],
    });
    expect(spec.env).toEqual([
      'LD_LIBRARY_PATH=/opt/rocm/lib:/a:/b',
      'PATH=/bin',
      'PYTHONPATH=/opt/python/lib/python3.11/site-packages',
    ]);
  });

  it('gives a spec the OCI config writer accepts', () => {
    const recipe: Recipe = {
      entrypoint: ['{{busybox-demo}}/bin/sh'],
      env: { PATH: '/bin' },
      ports: ['8000/tcp', '53/udp'],
      volumes: ['/data'],
      labels: { 'org.opencontainers.image.title': 'demo' },
      healthcheck: { test: ['CMD', 'true'], interval: '1m30s', timeout: '5s', startPeriod: '500ms', retries: 2 },
      stopSignal: 'SIGINT',
    };
    const config = JSON.parse(
      buildConfig(toImageConfigSpec(resolveRecipe(recipe, closure)), [], { created: new Date(1000) }).toString(),
    ) as { config: Record<string, unknown> };
    expect(config.config).toMatchObject({
      Entrypoint: [`${busybox}/bin/sh`],
      Env: ['PATH=/bin'],
      ExposedPorts: { '53/udp': {}, '8000/tcp': {} },
      Volumes: { '/data': {} },
      StopSignal: 'SIGINT',
      Healthcheck: { Test: ['CMD', 'true'], Interval: 90e9, Timeout: 5e9, StartPeriod: 5e8, Retries: 2 },
    });
  });
});
