import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseRecipe } from '../../src/recipe/load.js';
import { rootLayerSource } from '../../src/rootfs/root-layer.js';
import { checkImageUsers, groupFile, passwdFile, type ImageUser } from '../../src/rootfs/nss.js';
import { UserError } from '../../src/util/errors.js';
import { REPO, runCli } from '../helpers/cli.js';
import { fakeClosure } from '../recipe/fake-closure.js';
import { userErrorOf } from '../helpers/errors.js';
import { random } from '../helpers/mutate.js';

/**
 * /etc/passwd and /etc/group are `:`-separated lines: whatever a recipe (or a caller of the root layer)
 * puts in a user must never add a field, a line or an account, nor hand a system directory to a user.
 */

const dir = mkdtempSync(join(tmpdir(), 'nix2oci-passwd-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const user = (extra: Partial<ImageUser> = {}): ImageUser => ({ name: 'app', uid: 1000, gid: 1000, group: 'app', home: '/home/app', shell: '/bin/sh', ...extra });

describe('passwd and group fields', () => {
  it('refuses the injection from the issue: a shell with a line break adding a passwordless root', () => {
    const recipe = { users: [{ name: 'app', uid: 1000, gid: 1000, shell: '/bin/sh\nevil::0:0::/:/bin/sh' }] };
    expect(userErrorOf(() => parseRecipe(recipe, 'r.json'))).toBe(
      'r.json: /users/0/shell: "/bin/sh\\nevil::0:0::/:/bin/sh" holds a control character (a line break would start another account in /etc/passwd)',
    );
    // The root layer checks again, whatever its caller checked.
    expect(userErrorOf(() => rootLayerSource(fakeClosure([]), { copyToRoot: [], users: [user({ shell: '/bin/sh\nevil::0:0::/:/bin/sh' })], directories: [] }))).toMatch(
      /^image user "app": shell: .* holds a control character/,
    );
    expect(userErrorOf(() => passwdFile([user({ shell: '/bin/sh\nevil::0:0::/:/bin/sh' })]))).toMatch(/^image user "app": shell:/);
  });

  it('refuses a colon, any control character and relative or unnormalised paths in home and shell', () => {
    for (const field of ['home', 'shell'] as const) {
      for (let code = 0; code < 0x20; code++) {
        const bad = `/srv/a${String.fromCharCode(code)}b`;
        expect(userErrorOf(() => checkImageUsers([user({ [field]: bad })]))).toContain(`image user "app": ${field}: `);
      }
      for (const bad of ['/srv/a\u007fb', '/srv/a:b', 'srv/app', '/srv//app', '/srv/./app', '/srv/../etc', '/srv/app/', '/srv/a\r']) {
        expect(userErrorOf(() => checkImageUsers([user({ [field]: bad })]))).toContain(`image user "app": ${field}: `);
      }
    }
    expect(userErrorOf(() => parseRecipe({ users: [{ name: 'app', uid: 1, gid: 1, home: '/srv/a:b' }] }, 'r.json'))).toBe(
      `r.json: /users/0/home: "/srv/a:b" holds ':', which separates the fields of /etc/passwd`,
    );
  });

  it('refuses names, groups and ids the files cannot hold', () => {
    for (const name of ['', 'Root', 'a:b', 'a\nb', 'a b', '-x', 'x'.repeat(33), 'ü']) {
      expect(userErrorOf(() => checkImageUsers([user({ name })]))).toContain(': name: ');
      expect(userErrorOf(() => checkImageUsers([user({ group: name })]))).toContain(': group: ');
    }
    for (const id of [-1, 1.5, 2 ** 31, Number.NaN, Number.MAX_SAFE_INTEGER + 2]) {
      expect(userErrorOf(() => checkImageUsers([user({ uid: id })]))).toContain(': uid: ');
      expect(userErrorOf(() => checkImageUsers([user({ gid: id })]))).toContain(': gid: ');
    }
    expect(userErrorOf(() => groupFile([user({ group: 'video:x:0:app' })]))).toContain(': group: ');
  });

  it('keeps system directories, the wheels’ prefix and other homes from becoming a user’s home', () => {
    const cases: Array<[string, string]> = [
      ['/etc', '/etc is /etc, a system directory the user would own'],
      ['/etc/ssl', '/etc/ssl is inside /etc, a system directory the user would own'],
      ['/usr/local', '/usr/local is inside /usr, a system directory the user would own'],
      ['/bin', '/bin is /bin, a system directory the user would own'],
      ['/root', '/root is /root, a system directory the user would own'],
      ['/nix/store', '/nix/store is inside /nix, which the store layers own'],
      ['/tmp', '/tmp is a system directory the user would own'],
      ['/var/lib', '/var/lib is a system directory the user would own'],
      ['/opt', '/opt is a system directory the user would own'],
      ['/opt/python', '/opt/python is /opt/python, which the user would then own'],
      ['/srv/py', '/srv/py holds /srv/py/env, which the user would then own'],
    ];
    for (const [home, why] of cases) {
      const recipe = { users: [{ name: 'app', uid: 1000, gid: 1000, home }], ...(home === '/srv/py' && { python: { prefix: '/srv/py/env' } }) };
      expect(userErrorOf(() => parseRecipe(recipe, 'r.json'))).toBe(`r.json: /users/0/home: ${why}`);
    }
    // Another user's home below this one's.
    expect(
      userErrorOf(() =>
        parseRecipe({ users: [{ name: 'a', uid: 1, gid: 1, home: '/data' }, { name: 'b', uid: 2, gid: 2, home: '/data/b' }] }, 'r.json'),
      ),
    ).toBe('r.json: /users/0/home: /data holds /data/b, which the user would then own');
    // The root layer refuses the same without the recipe's checks.
    expect(userErrorOf(() => rootLayerSource(fakeClosure([]), { copyToRoot: [], users: [user({ home: '/etc' })], directories: [] }))).toBe(
      'image user "app": home: /etc is /etc, a system directory the user would own',
    );
    expect(
      userErrorOf(() => rootLayerSource(fakeClosure([]), { copyToRoot: [], users: [user({ home: '/opt' })], directories: [], lowerLayerDirectories: ['/opt/python'] })),
    ).toBe('image user "app": home: /opt is a system directory the user would own');
    // What service accounts and apps use stays allowed.
    for (const home of ['/', '/home/app', '/srv/app', '/var/lib/app', '/app', '/data/models']) {
      expect(() => parseRecipe({ users: [{ name: 'app', uid: 1000, gid: 1000, home }] }, 'r.json')).not.toThrow();
    }
  });

  it('never writes more than one line of seven fields per account, for 500 random users', () => {
    const alphabet = ['a', 'z', '0', '/', '/', ':', '\n', '\r', '.', '-', '_', ' ', '\u0000', '\u007f', 'é', '\u2028', '$'];
    for (let seed = 1; seed <= 500; seed++) {
      const next = random(seed);
      const text = (n: number) => Array.from({ length: 1 + Math.floor(next() * n) }, () => alphabet[Math.floor(next() * alphabet.length)]).join('');
      const candidate = user({
        name: next() < 0.8 ? 'app' : text(6),
        group: next() < 0.8 ? 'app' : text(6),
        home: `/${text(12)}`,
        shell: `/${text(12)}`,
      });
      let passwd: string;
      let group: string;
      try {
        passwd = passwdFile([candidate]);
        group = groupFile([candidate]);
      } catch (error) {
        expect(error, `seed ${seed}`).toBeInstanceOf(UserError);
        continue;
      }
      const lines = passwd.split('\n').slice(0, -1);
      expect(lines, `seed ${seed}: ${JSON.stringify(passwd)}`).toHaveLength(2);
      for (const line of lines) expect(line.split(':'), `seed ${seed}`).toHaveLength(7);
      expect(lines[1]!.split(':')[2]).toBe('1000');
      expect(group.split('\n').slice(0, -1).every((line) => line.split(':').length === 4)).toBe(true);
    }
  });
});

describe('build-image with a hostile recipe', () => {
  it('fails in one line, exit 1, and writes no output', () => {
    const recipe = join(dir, 'evil.json');
    writeFileSync(recipe, JSON.stringify({ entrypoint: ['/bin/sh'], copyToRoot: ['busybox-demo'], users: [{ name: 'app', uid: 1000, gid: 1000, shell: '/bin/sh\nevil::0:0::/:/bin/sh' }] }));
    const out = join(dir, 'evil.tar');
    const result = runCli(['build-image', '--closure', join(REPO, 'layers/demo/demo.closure'), '--recipe', recipe, '--no-cache', '--output', out]);
    expect(result.code).toBe(1);
    expect(result.stderr.trim().split('\n')).toEqual([
      `nix2oci: ${recipe}: /users/0/shell: "/bin/sh\\nevil::0:0::/:/bin/sh" holds a control character (a line break would start another account in /etc/passwd)`,
    ]);
    expect(existsSync(out)).toBe(false);
  });
});
