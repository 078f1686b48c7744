import { beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { cliOk, runCli } from '../helpers/cli.js';
import { buildPythonClosure, canBuildPythonClosure, exportPythonClosure } from '../helpers/python-closure.js';
import { useScratchDirs } from '../helpers/scratch.js';
import { tools } from '../helpers/tools.js';
import { makeWheel } from '../helpers/wheels.js';
import { expandWheelPaths } from '../../src/wheels/paths.js';
import { isUserError } from '../../src/util/errors.js';

/**
 * Wheels as users have them: several after one --wheel (as a shell expands wheels/*.whl), directories
 * of them, and a lock of the reviewed ones with their hashes, checked before anything is installed.
 */
const scratch = useScratchDirs();

describe('wheel paths', () => {
  const dir = scratch('nix2oci-wheel-paths-');
  const wheels = join(dir, 'wheels');
  mkdirSync(wheels);
  for (const name of ['b-1.0-py3-none-any.whl', 'a-1.0-py3-none-any.whl', 'C-1.0-py3-none-any.whl']) writeFileSync(join(wheels, name), 'zip');
  writeFileSync(join(wheels, 'README.txt'), 'not a wheel');
  mkdirSync(join(wheels, 'old.whl'));
  mkdirSync(join(wheels, 'nested'));
  writeFileSync(join(wheels, 'nested', 'n-1.0-py3-none-any.whl'), 'zip');
  symlinkSync(join(wheels, 'nested', 'n-1.0-py3-none-any.whl'), join(wheels, 'link-1.0-py3-none-any.whl'));
  mkdirSync(join(dir, 'empty'));

  it('takes files as given and a directory as its *.whl files, sorted; a path named twice once', () => {
    const explicit = join(dir, 'x-1.0-py3-none-any.whl');
    writeFileSync(explicit, 'zip');
    expect(expandWheelPaths([explicit, wheels, join(wheels, 'a-1.0-py3-none-any.whl')])).toEqual([
      explicit,
      ...['C-1.0-py3-none-any.whl', 'a-1.0-py3-none-any.whl', 'b-1.0-py3-none-any.whl', 'link-1.0-py3-none-any.whl'].map((n) => join(wheels, n)),
    ]);
  });

  it('says which path is missing or holds no wheel', () => {
    const message = (paths: string[]) => {
      try {
        expandWheelPaths(paths);
      } catch (err) {
        if (isUserError(err)) return err.message;
        throw err;
      }
      return 'no error';
    };
    expect(message([join(dir, 'nope.whl')])).toBe(`${join(dir, 'nope.whl')}: no such wheel file or directory`);
    expect(message([join(dir, 'empty')])).toBe(`${join(dir, 'empty')}: the directory holds no *.whl file`);
  });
});

const ready = canBuildPythonClosure() && tools('nix-build', 'nix-store');

describe.runIf(ready)('wheels as users have them, from the CLI', () => {
  let dir: string;
  let closure: string;
  let wheels: Record<'alpha' | 'beta' | 'gamma' | 'delta', string>;
  const sha256 = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');

  beforeAll(() => {
    dir = scratch('nix2oci-wheel-inputs-');
    closure = exportPythonClosure(buildPythonClosure(), join(dir, 'runtime')).closureFile;
    mkdirSync(join(dir, 'more'));
    const make = (d: string, name: string) => makeWheel({ dir: d, name, version: '1.0', files: { [`${name}/__init__.py`]: `NAME = "${name}"\n` } });
    wheels = { alpha: make(dir, 'alpha'), beta: make(dir, 'beta'), delta: make(join(dir, 'more'), 'delta'), gamma: make(join(dir, 'more'), 'gamma') };
  });

  const build = (args: string[], out = join(dir, `out-${Math.random()}.tar`)) =>
    runCli(['build-image', '--closure', closure, '--no-cache', ...args, '--output', out]);
  const wheelLayers = (stdout: string) =>
    (JSON.parse(stdout) as { layers: { contents: string[] }[] }).layers.flatMap((l) => l.contents).filter((c) => c.endsWith('.whl'));

  it('takes several wheels after one --wheel and a directory as every *.whl in it, sorted', () => {
    const result = build(['--json', '-q', '--wheel', wheels.beta, wheels.alpha, '--wheel', join(dir, 'more')]);
    expect(result.code).toBe(0);
    expect(wheelLayers(result.stdout)).toEqual(['beta-1.0-py3-none-any.whl', 'alpha-1.0-py3-none-any.whl', 'delta-1.0-py3-none-any.whl', 'gamma-1.0-py3-none-any.whl']);
    // A recipe's directory is relative to the recipe.
    const recipe = join(dir, 'image.json');
    writeFileSync(recipe, JSON.stringify({ wheels: ['more'] }));
    expect(wheelLayers(build(['--json', '-q', '--recipe', recipe]).stdout)).toEqual(['delta-1.0-py3-none-any.whl', 'gamma-1.0-py3-none-any.whl']);
    const missing = build(['--wheel', join(dir, 'nope')]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(new RegExp(`nix2oci: ${join(dir, 'nope')}: no such wheel file or directory\\n$`));
  });

  it('builds exactly the wheels of the lock, and refuses others before installing anything, one line each', () => {
    const lock = join(dir, 'wheels.lock');
    writeFileSync(
      lock,
      [
        '# reviewed',
        `alpha==1.0 \\`,
        `    --hash=sha256:${sha256(wheels.alpha)}`,
        `beta==1.0 --hash=sha256:${sha256(wheels.beta)}  # via alpha`,
        `winonly==1.0 ; sys_platform == "win32" --hash=sha256:${'0'.repeat(64)}`,
        '',
      ].join('\n'),
    );
    cliOk(['build-image', '-q', '--closure', closure, '--no-cache', '--wheel', wheels.alpha, wheels.beta, '--wheel-lock', lock, '--output', join(dir, 'locked.tar')]);

    // The same lock as the recipe's wheelLock, relative to the recipe.
    const recipe = join(dir, 'locked.json');
    writeFileSync(recipe, JSON.stringify({ wheels: [relative(dir, wheels.alpha), relative(dir, wheels.beta)], wheelLock: 'wheels.lock' }));
    cliOk(['build-image', '-q', '--closure', closure, '--no-cache', '--recipe', recipe, '--output', join(dir, 'locked2.tar')]);

    const tampered = join(dir, 'tampered');
    mkdirSync(tampered);
    const beta = makeWheel({ dir: tampered, name: 'beta', version: '1.0', files: { 'beta/__init__.py': 'NAME = "not what was reviewed"\n' } });
    writeFileSync(lock, `${readFileSync(lock, 'utf8')}gone==2.0 --hash=sha256:${'1'.repeat(64)}\n`);
    const out = join(dir, 'refused.tar');
    const problems = join(dir, 'lock-problems.txt');
    const refused = build(['--wheel', wheels.alpha, beta, wheels.gamma, '--wheel-lock', lock, '--problems', problems], out);
    expect(refused.code).toBe(1);
    expect(existsSync(out)).toBe(false);
    expect(refused.stderr).toContain(
      [
        `nix2oci: the wheels do not match the lock ${lock} (3 problems):`,
        `  ${lock}:4: beta-1.0-py3-none-any.whl has sha256:${sha256(beta)}, not the hash pinned for beta==1.0`,
        `  ${lock}: gamma-1.0-py3-none-any.whl: gamma is not in the lock`,
        `  ${lock}:6: gone==2.0 is pinned, but no wheel of it was given`,
        '',
      ].join('\n'),
    );
    // Nothing was installed: no layer was written.
    expect(refused.stderr).not.toMatch(/^layer /m);
    expect(readFileSync(problems, 'utf8')).toMatch(/^error: .*gamma is not in the lock — once it is reviewed, add gamma==1\.0 --hash=sha256:[0-9a-f]{64}$/m);

    const broken = join(dir, 'broken.lock');
    writeFileSync(broken, 'alpha>=1.0\n');
    const syntax = build(['--wheel', wheels.alpha, '--wheel-lock', broken]);
    expect(syntax.code).toBe(1);
    expect(syntax.stderr).toMatch(/nix2oci: .*broken\.lock:1: alpha>=1\.0 does not pin one version; expected name==version --hash=sha256:… \(the form pip --require-hashes takes\)\n$/);
  });
});
