import { describe, expect, it } from 'vitest';
import { applyOverrides, mergeRecipe, overridesToPatch } from '../../src/recipe/overrides.js';
import type { Recipe } from '../../src/recipe/schema.js';
import { UserError } from '../../src/util/errors.js';
import { userErrorOf } from '../helpers/errors.js';

const base: Recipe = {
  name: 'nix2oci/demo',
  entrypoint: ['/bin/app'],
  cmd: ['serve'],
  env: { PATH: '/bin', PORT: '8000' },
  labels: { a: '1' },
  ports: ['8000/tcp'],
  volumes: ['/data'],
  copyToRoot: ['busybox-demo'],
  healthcheck: { test: ['CMD', 'true'], interval: '30s', retries: 3 },
  architecture: 'arm64',
  variant: 'v8',
  users: [{ name: 'app', uid: 1000, gid: 1000 }],
};

describe('applyOverrides', () => {
  it('leaves the recipe alone without flags and does not modify its input', () => {
    const copy = structuredClone(base);
    expect(applyOverrides(base, {})).toEqual(base);
    applyOverrides(base, { env: ['X=1'], ports: ['9000'], healthcheckRetries: '1' });
    expect(base).toEqual(copy);
  });

  it('merges --env and --label per key, the flag winning; a value may hold = and be empty', () => {
    const merged = applyOverrides(base, { env: ['PORT=9000', 'OPTS=a=b', 'EMPTY='], labels: ['b=2', 'a=0'] });
    expect(merged.env).toEqual({ PATH: '/bin', PORT: '9000', OPTS: 'a=b', EMPTY: '' });
    expect(merged.labels).toEqual({ a: '0', b: '2' });
  });

  it('adds --port, --volume and --copy-to-root to the file’s, without duplicates', () => {
    const merged = applyOverrides(base, { ports: ['8000/tcp', '9000/UDP'], volumes: ['/models', '/data'], copyToRoot: ['bash'] });
    expect(merged.ports).toEqual(['8000/tcp', '9000/udp']);
    expect(merged.volumes).toEqual(['/data', '/models']);
    expect(merged.copyToRoot).toEqual(['busybox-demo', 'bash']);
  });

  it('reads --entrypoint and --cmd as a JSON list, one unsplit word, or empty to clear', () => {
    expect(applyOverrides(base, { entrypoint: '["python3", "-m", "http.server"]' }).entrypoint).toEqual(['python3', '-m', 'http.server']);
    expect(applyOverrides(base, { entrypoint: '/bin/sh -c x' }).entrypoint).toEqual(['/bin/sh -c x']);
    expect(applyOverrides(base, { cmd: '' }).cmd).toEqual([]);
    expect(applyOverrides(base, { cmd: '[]' }).cmd).toEqual([]);
    expect(userErrorOf(() => applyOverrides(base, { entrypoint: '[python3' }))).toBe(
      '--entrypoint [python3: not a JSON list of strings (a value starting with [ is read as JSON)',
    );
    expect(userErrorOf(() => applyOverrides(base, { cmd: '[1, 2]' }))).toBe(
      '--cmd [1, 2]: expected a JSON list of strings such as ["python3","-m","app"]',
    );
  });

  it('replaces workdir, user, stop signal (TERM → SIGTERM) and architecture', () => {
    const merged = applyOverrides(base, { workingDir: '/srv', user: 'app', stopSignal: 'term' });
    expect(merged).toMatchObject({ workingDir: '/srv', user: 'app', stopSignal: 'SIGTERM' });
    expect(applyOverrides(base, { stopSignal: '9' }).stopSignal).toBe('9');
  });

  it('takes --arch as a GOARCH name (dropping a variant) or a Nix system', () => {
    const amd = applyOverrides(base, { architecture: 'amd64' });
    expect(amd.architecture).toBe('amd64');
    expect(amd.variant).toBeUndefined();
    expect(applyOverrides({}, { architecture: 'aarch64-linux' })).toMatchObject({ architecture: 'arm64', variant: 'v8', os: 'linux' });
    expect(applyOverrides({}, { architecture: 'x86_64-linux' })).toEqual({ architecture: 'amd64', os: 'linux' });
    expect(userErrorOf(() => applyOverrides(base, { architecture: 'x86' }))).toBe(
      '--arch x86: expected one of amd64, arm64, arm, 386, ppc64le, s390x, riscv64, mips64le, loong64 or a Nix system such as x86_64-linux',
    );
  });

  it('builds a healthcheck: a string runs in the shell, a list is an argv, timings replace one by one', () => {
    expect(applyOverrides({}, { healthcheckCmd: 'wget -q -O- http://localhost:8000/health' }).healthcheck).toEqual({
      test: ['CMD-SHELL', 'wget -q -O- http://localhost:8000/health'],
    });
    expect(applyOverrides({}, { healthcheckCmd: '["wget","-q","http://x"]' }).healthcheck?.test).toEqual(['CMD', 'wget', '-q', 'http://x']);
    expect(applyOverrides({}, { healthcheckCmd: '["CMD-SHELL","true"]' }).healthcheck?.test).toEqual(['CMD-SHELL', 'true']);
    expect(applyOverrides(base, { healthcheckTimeout: '5s', healthcheckRetries: '5' }).healthcheck).toEqual({
      test: ['CMD', 'true'],
      interval: '30s',
      timeout: '5s',
      retries: 5,
    });
    expect(applyOverrides(base, { healthcheckCmd: 'true', healthcheckStartPeriod: '1m' }).healthcheck).toEqual({
      test: ['CMD-SHELL', 'true'],
      interval: '30s',
      startPeriod: '1m',
      retries: 3,
    });
    expect(applyOverrides(base, { noHealthcheck: true }).healthcheck).toEqual({ test: ['NONE'] });
  });

  it('refuses healthcheck timings without a healthcheck, bad values and contradictions', () => {
    expect(userErrorOf(() => applyOverrides({}, { healthcheckInterval: '10s' }))).toMatch(/^--healthcheck-interval, .* need a healthcheck/);
    expect(userErrorOf(() => applyOverrides(base, { healthcheckInterval: 'soon' }))).toBe(
      '--healthcheck-interval soon: expected a duration such as 30s, 1m30s or 500ms',
    );
    expect(userErrorOf(() => applyOverrides(base, { healthcheckRetries: '-1' }))).toBe('--healthcheck-retries -1: expected a whole number');
    expect(userErrorOf(() => applyOverrides(base, { healthcheckCmd: ' ' }))).toMatch(/^--healthcheck-cmd: the command is empty/);
    expect(userErrorOf(() => applyOverrides(base, { healthcheckCmd: 'x', noHealthcheck: true }))).toBe(
      '--no-healthcheck and --healthcheck-cmd contradict each other',
    );
    expect(userErrorOf(() => applyOverrides(base, { healthcheckCmd: '["CMD-SHELL","a","b"]' }))).toBe(
      'recipe with command-line overrides: /healthcheck/test: CMD-SHELL takes exactly one command string',
    );
  });

  it('checks each flag value and names the flag', () => {
    const cases: [Parameters<typeof applyOverrides>[1], string][] = [
      [{ env: ['PORT'] }, '--env PORT: expected NAME=value'],
      [{ env: ['=x'] }, '--env =x: expected NAME=value'],
      [{ env: ['MY-VAR=1'] }, '--env MY-VAR=1: expected NAME=value'],
      [{ labels: ['novalue'] }, '--label novalue: expected KEY=value'],
      [{ ports: ['http'] }, '--port http: expected PORT or PORT/tcp, PORT/udp, PORT/sctp'],
      [{ ports: ['99999/tcp'] }, '--port 99999/tcp: port 99999 is outside 1-65535'],
      [{ volumes: ['data'] }, '--volume data: expected an absolute path'],
      [{ workingDir: 'srv' }, '--workdir srv: expected an absolute path'],
      [{ user: 'a:b:c' }, '--user a:b:c: expected a user such as 1000, 1000:1000 or app'],
      [{ stopSignal: 'SIG TERM' }, '--stop-signal SIG TERM: expected a signal such as SIGTERM or a number'],
      [{ copyToRoot: ['bash/bin'] }, '--copy-to-root bash/bin: expected a store path or a store path name'],
    ];
    for (const [overrides, message] of cases) expect(userErrorOf(() => applyOverrides(base, overrides))).toBe(message);
  });

  it('checks the merged recipe as a whole', () => {
    expect(userErrorOf(() => applyOverrides(base, { user: 'bob' }))).toBe(
      "recipe with command-line overrides: /user: 'bob' is not a user of the image (root, app); add it to users or give a uid",
    );
    expect(applyOverrides(base, { user: '1001:1001' }).user).toBe('1001:1001');
  });
});

describe('overridesToPatch and mergeRecipe', () => {
  it('gives a patch holding only what the flags set', () => {
    expect(overridesToPatch({})).toEqual({});
    expect(overridesToPatch({ env: ['A=1'], ports: ['80'] })).toEqual({ env: { A: '1' }, ports: ['80'] });
  });

  it('merges nested objects and adds lists of users, directories and wheels', () => {
    const merged = mergeRecipe(
      { python: { prefix: '/opt/python' }, checks: { waiveRequirements: ['a'] }, wheels: ['a.whl'], directories: [{ path: '/a' }] },
      { python: { interpreter: 'python3' }, wheels: ['b.whl', 'a.whl'], directories: [{ path: '/b' }], users: [{ name: 'u', uid: 1, gid: 1 }] },
    );
    expect(merged).toEqual({
      python: { prefix: '/opt/python', interpreter: 'python3' },
      checks: { waiveRequirements: ['a'] },
      wheels: ['a.whl', 'b.whl'],
      directories: [{ path: '/a' }, { path: '/b' }],
      users: [{ name: 'u', uid: 1, gid: 1 }],
    });
  });
});
