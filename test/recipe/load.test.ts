import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadRecipe, parseRecipe } from '../../src/recipe/load.js';
import { UserError } from '../../src/util/errors.js';
import { userErrorOf } from '../helpers/errors.js';

const dir = mkdtempSync(join(tmpdir(), 'nix2oci-recipe-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function writeRecipe(name: string, text: string): string {
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
}

const fullRecipe = {
  name: 'nix2oci/demo',
  tag: 'v1',
  entrypoint: ['{{demo-app}}/bin/hello'],
  cmd: ['--verbose'],
  env: { PATH: '/bin', PORT: '8000' },
  workingDir: '/data',
  user: 'app:app',
  ports: ['8000/tcp', '53/udp', '9000'],
  volumes: ['/models'],
  labels: { 'org.opencontainers.image.title': 'demo' },
  stopSignal: 'SIGINT',
  healthcheck: { test: ['CMD', 'wget', '-q', 'http://localhost:8000/health'], interval: '30s', timeout: '5s', startPeriod: '1m30s', retries: 3 },
  architecture: 'arm64',
  variant: 'v8',
  os: 'linux',
  copyToRoot: ['busybox-demo', '{{demo-data}}', '/nix/store/mc8m8h4nkn1q075kcgqb869649gx00yf-busybox-demo'],
  users: [{ name: 'app', uid: 1000, gid: 1000, home: '/home/app', shell: '/bin/sh' }],
  directories: [{ path: '/models', mode: '0755' }, { path: '/scratch', mode: '1777' }, { path: '/data' }],
  maxLayers: 50,
  compression: 'none',
  wheels: ['wheels/vllm-0.12.0-cp311-cp311-linux_x86_64.whl', 'wheels/'],
  wheelLock: 'wheels.lock',
  python: { prefix: '/opt/python', interpreter: 'python3' },
  checks: { waiveRequirements: ['triton'], waiveLibraries: ['libcuda.so.1'], skipRequirements: false, skipLibraries: true, skipTraps: ['amdsmi', 'aiter'] },
};

describe('loadRecipe', () => {
  it('accepts every documented key and returns the recipe as written', () => {
    const file = writeRecipe('full.json', JSON.stringify(fullRecipe, null, 2));
    expect(loadRecipe(file)).toEqual(fullRecipe);
  });

  it('accepts the demo recipe', () => {
    const recipe = loadRecipe('layers/demo/image.json');
    expect(recipe.name).toBe('nix2oci/demo');
    expect(recipe.copyToRoot).toEqual(['busybox-demo']);
    expect(recipe.entrypoint).toEqual(['{{demo-app}}/bin/hello']);
  });

  it('accepts an empty object, a $schema key and a byte-order mark', () => {
    expect(loadRecipe(writeRecipe('empty.json', '{}'))).toEqual({});
    expect(loadRecipe(writeRecipe('bom.json', '\ufeff{"$schema": "https://nix2oci.dev/schema/image.json"}'))).toEqual({
      $schema: 'https://nix2oci.dev/schema/image.json',
    });
  });

  it('names an unknown key and suggests the closest known one', () => {
    const file = writeRecipe('typo.json', '{"entrypiont": ["x"]}');
    expect(userErrorOf(() => loadRecipe(file))).toBe(`${file}: unknown key 'entrypiont' at / (did you mean 'entrypoint'?)`);
  });

  it('suggests keys inside nested objects and under names other tools use', () => {
    expect(userErrorOf(() => parseRecipe({ healthcheck: { test: ['NONE'], intervall: '1s' } }, 'r.json'))).toBe(
      "r.json: unknown key 'intervall' at /healthcheck (did you mean 'interval'?)",
    );
    expect(userErrorOf(() => parseRecipe({ WorkDir: '/x' }, 'r.json'))).toBe("r.json: unknown key 'WorkDir' at / (did you mean 'workingDir'?)");
    expect(userErrorOf(() => parseRecipe({ contents: ['bash'] }, 'r.json'))).toBe(
      "r.json: unknown key 'contents' at / (did you mean 'copyToRoot'?)",
    );
    expect(userErrorOf(() => parseRecipe({ zzzzzz: 1 }, 'r.json'))).toBe("r.json: unknown key 'zzzzzz' at /");
  });

  it('reports a wrong type with its JSON pointer and the value found', () => {
    const file = writeRecipe('type.json', '{"env": {"PORT": 8000}}');
    expect(userErrorOf(() => loadRecipe(file))).toBe(`${file}: /env/PORT: must be a string, got a number 8000`);
    expect(userErrorOf(() => parseRecipe({ entrypoint: '/bin/app' }, 'r.json'))).toBe(
      'r.json: /entrypoint: must be an array, got a string "/bin/app"',
    );
    expect(userErrorOf(() => parseRecipe({ maxLayers: 2.5 }, 'r.json'))).toContain('/maxLayers: must be an integer, got a fraction 2.5');
    expect(userErrorOf(() => parseRecipe([], 'r.json'))).toBe('r.json: /: must be an object, got an array');
  });

  it('takes checks.skipTraps by trap name, and names the traps (with the closest) when one is misspelt', () => {
    const all = ['cxx-runtime', 'amdsmi', 'c-compiler', 'python-headers', 'aiter'];
    expect(parseRecipe({ checks: { skipTraps: all } }, 'r.json')).toEqual({ checks: { skipTraps: all } });
    expect(userErrorOf(() => parseRecipe({ checks: { skipTraps: ['amd-smi'] } }, 'r.json'))).toBe(
      'r.json: /checks/skipTraps/0: must be one of cxx-runtime, amdsmi, c-compiler, python-headers, aiter, got "amd-smi" (did you mean \'amdsmi\'?)',
    );
    expect(userErrorOf(() => parseRecipe({ checks: { skipTrap: ['amdsmi'] } }, 'r.json'))).toBe(
      "r.json: unknown key 'skipTrap' at /checks (did you mean 'skipTraps'?)",
    );
  });

  it('reports missing required keys', () => {
    expect(userErrorOf(() => parseRecipe({ healthcheck: { interval: '5s' } }, 'r.json'))).toBe(
      "r.json: /healthcheck: missing required key 'test'",
    );
    expect(userErrorOf(() => parseRecipe({ users: [{ name: 'app', uid: 1000 }] }, 'r.json'))).toBe(
      "r.json: /users/0: missing required key 'gid'",
    );
  });

  it('says what a constrained string should look like', () => {
    expect(userErrorOf(() => parseRecipe({ ports: ['8000/tcp', 'http'] }, 'r.json'))).toBe(
      'r.json: /ports/1: expected a port such as 8000/tcp, 53/udp or 8000, got "http"',
    );
    expect(userErrorOf(() => parseRecipe({ volumes: ['models'] }, 'r.json'))).toBe('r.json: /volumes/0: expected an absolute path, got "models"');
    expect(userErrorOf(() => parseRecipe({ healthcheck: { test: ['NONE'], interval: '30 seconds' } }, 'r.json'))).toBe(
      'r.json: /healthcheck/interval: expected a duration such as 30s, 1m30s or 500ms, got "30 seconds"',
    );
    expect(userErrorOf(() => parseRecipe({ env: { 'MY-VAR': 'x' } }, 'r.json'))).toBe(
      "r.json: /env: invalid key 'MY-VAR': expected a variable name (letters, digits, _)",
    );
    expect(userErrorOf(() => parseRecipe({ compression: 'brotli' }, 'r.json'))).toBe('r.json: /compression: must be one of gzip, zstd, none, got "brotli"');
    expect(userErrorOf(() => parseRecipe({ name: 'Nix2OCI/Demo' }, 'r.json'))).toContain('/name: expected an image name');
  });

  it('lists several problems on one line, at most five', () => {
    const message = userErrorOf(() =>
      parseRecipe({ env: { A: 1 }, cmd: 'x', ports: [1], volumes: ['x'], tag: '', name: 'UPPER', os: 'Linux' }, 'r.json'),
    );
    expect(message).toMatch(/^r\.json: .*; .*; and \d+ more$/);
    expect(message.split('; ')).toHaveLength(6);
  });

  it('checks what the schema cannot: ranges, healthcheck shape, users, directories, user references', () => {
    const cases: [unknown, string][] = [
      [{ ports: ['70000/tcp'] }, '/ports/0: port 70000 is outside 1-65535'],
      [{ ports: ['0'] }, '/ports/0: port 0 is outside 1-65535'],
      [{ healthcheck: { test: ['curl', 'x'] } }, '/healthcheck/test: must start with CMD, CMD-SHELL or NONE, got "curl"'],
      [{ healthcheck: { test: ['CMD-SHELL', 'a', 'b'] } }, '/healthcheck/test: CMD-SHELL takes exactly one command string'],
      [{ healthcheck: { test: ['CMD'] } }, '/healthcheck/test: CMD needs a command after it'],
      [{ users: [{ name: 'root', uid: 0, gid: 0 }] }, '/users/0: root (uid 0) is always present; list only other users'],
      [
        { users: [{ name: 'a', uid: 1, gid: 1 }, { name: 'a', uid: 2, gid: 2 }] },
        "/users/1: user 'a' is already /users/0",
      ],
      [{ users: [{ name: 'a', uid: 1, gid: 1 }, { name: 'b', uid: 1, gid: 2 }] }, '/users/1: uid 1 is already used by /users/0'],
      [
        { users: [{ name: 'a', uid: 1, gid: 1, group: 'g' }, { name: 'b', uid: 2, gid: 2, group: 'g' }] },
        "/users/1/group: group 'g' is gid 1, not 2",
      ],
      [{ directories: [{ path: '/etc/passwd' }] }, '/directories/0/path: /etc/passwd is a file nix2oci writes'],
      [{ directories: [{ path: '/nix/store/x' }] }, '/directories/0/path: /nix/store/x is inside /nix, which the store layers own'],
      [{ directories: [{ path: '/a/../b' }] }, '/directories/0/path: /a/../b is not a normalised path (no //, . or ..)'],
      [{ directories: [{ path: '/' }] }, '/directories/0/path: cannot be / itself'],
      [{ directories: [{ path: '/m' }, { path: '/m/' }] }, '/directories/1/path: /m is already /directories/0'],
      [{ directories: [{ path: '/m', mode: '77777' }] }, '/directories/0/mode: 77777 is not a file mode (at most 7777)'],
      [{ user: 'app' }, "/user: 'app' is not a user of the image (root); add it to users or give a uid"],
      [{ tag: 'v1' }, '/tag: a tag needs a name (set name, e.g. "nix2oci/demo")'],
    ];
    for (const [recipe, message] of cases) expect(userErrorOf(() => parseRecipe(recipe, 'r.json'))).toBe(`r.json: ${message}`);
    expect(parseRecipe({ users: [{ name: 'svc', uid: 999, gid: 999, home: '/' }] }, 'r.json').users?.[0]?.home).toBe('/');
    expect(userErrorOf(() => parseRecipe({ users: [{ name: 'svc', uid: 9, gid: 9, home: '/nix/var' }] }, 'r.json'))).toBe(
      'r.json: /users/0/home: /nix/var is inside /nix, which the store layers own',
    );
    expect(parseRecipe({ user: '1000:1000' }, 'r.json').user).toBe('1000:1000');
    expect(parseRecipe({ user: 'root' }, 'r.json').user).toBe('root');
    expect(parseRecipe({ user: 'app:app', users: [{ name: 'app', uid: 1, gid: 1 }] }, 'r.json').user).toBe('app:app');
  });

  it('reports invalid JSON with its line and column, and unreadable files', () => {
    const file = writeRecipe('broken.json', '{\n  "name": "x",\n  "tag": }\n');
    expect(userErrorOf(() => loadRecipe(file))).toBe(`${file}: not valid JSON: line 3 column 10: unexpected '}', expected a value`);
    const cases: [string, string][] = [
      ['{"a": 1,}', "line 1 column 9: unexpected '}', expected a key in double quotes"],
      ['{"a": [1 2]}', "line 1 column 10: unexpected '2', expected ',' or ']'"],
      ['{"a": "x\\q"}', 'line 1 column 9: invalid escape in a string'],
      ['{"a": "x', 'line 1 column 7: unterminated string'],
      ['{"a": 1} x', "line 1 column 10: unexpected 'x', expected the end of the file"],
      ['', 'line 1 column 1: unexpected end of file, expected a value'],
      ["{'a': 1}", "line 1 column 2: unexpected ''', expected a key in double quotes"],
    ];
    for (const [text, why] of cases) {
      expect(userErrorOf(() => loadRecipe(writeRecipe('bad.json', text)))).toBe(`${join(dir, 'bad.json')}: not valid JSON: ${why}`);
    }
    expect(userErrorOf(() => loadRecipe(join(dir, 'missing.json')))).toBe(`${join(dir, 'missing.json')}: cannot read the recipe: no such file`);
    expect(userErrorOf(() => loadRecipe(dir))).toBe(`${dir}: the recipe is not a regular file`);
  });
});
