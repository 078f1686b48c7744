import { beforeAll, describe, expect, it } from 'vitest';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cliOk, runCli } from '../helpers/cli.js';
import { compileElf } from '../helpers/native-wheels.js';
import { buildPythonClosure, canBuildPythonClosure, exportPythonClosure } from '../helpers/python-closure.js';
import { useScratchDirs } from '../helpers/scratch.js';
import { tools } from '../helpers/tools.js';
import { makeWheel } from '../helpers/wheels.js';

/**
 * A failing build a user can act on, through the CLI on the real Debian-based Python closure without
 * gcc's runtime: wheels whose real ELF files need libstdc++ and libgcc_s (and whose test executables
 * run with /lib64's loader), and a wheel with an unmet requirement.
 */
const ready = canBuildPythonClosure() && tools('nix-build', 'nix-store', 'gcc', 'python3');
const scratch = useScratchDirs();

const GCC_LINE =
  "libstdc++.so.6, libgcc_s.so.1: needed by 4 files in 2 wheels (cxxpkg, otherpkg) — add gcc's runtime libraries to the closure (stdenv.cc.cc.lib)";

describe.runIf(ready)('problems a user can act on, from the CLI', () => {
  let dir: string;
  let closure: string;
  let closureWithGcc: string;
  let wheels: string[];

  beforeAll(() => {
    dir = scratch('nix2oci-problems-');
    closure = exportPythonClosure(buildPythonClosure(), join(dir, 'plain')).closureFile;
    closureWithGcc = exportPythonClosure(buildPythonClosure({ cxxRuntime: true }), join(dir, 'gcc')).closureFile;
    const cxx = compileElf({ needed: ['libstdc++.so.6', 'libgcc_s.so.1'] });
    const testExe = compileElf({ executable: true, needed: ['libstdc++.so.6'] });
    wheels = [
      makeWheel({
        dir,
        name: 'cxxpkg',
        version: '1.0',
        tag: 'cp311-cp311-linux_x86_64',
        rootIsPurelib: false,
        files: {
          'cxxpkg/__init__.py': '',
          'cxxpkg/_a.so': { content: cxx, mode: 0o755 },
          'cxxpkg/_b.so': { content: cxx, mode: 0o755 },
          'cxxpkg/lib/libcxxpkg.so': { content: cxx, mode: 0o755 },
          ...Object.fromEntries(['one', 'two', 'three'].map((t) => [`cxxpkg/tests/test_${t}`, { content: testExe, mode: 0o755 }])),
        },
      }),
      makeWheel({
        dir,
        name: 'otherpkg',
        version: '2.0',
        tag: 'cp311-cp311-linux_x86_64',
        rootIsPurelib: false,
        files: { 'otherpkg/__init__.py': '', 'otherpkg/_c.so': { content: compileElf({ needed: ['libstdc++.so.6'] }), mode: 0o755 } },
      }),
      makeWheel({ dir, name: 'needy', version: '1.0', requires: ['numpy>=1.26'], files: { 'needy/__init__.py': '' } }),
    ];
  });

  const args = (out: string, extra: string[] = [], closureFile = closure) => [
    'build-image',
    '--closure',
    closureFile,
    '--no-cache',
    ...wheels.flatMap((w) => ['--wheel', w]),
    ...extra,
    '--output',
    out,
  ];

  it('fails with the problems grouped, each with its fix, a waiver never first, and no output', () => {
    const out = join(dir, 'fail.tar');
    const result = runCli(args(out));
    expect(result.code).toBe(1);
    expect(existsSync(out)).toBe(false);
    const error = result.stderr.slice(result.stderr.indexOf('nix2oci: '));
    // 3 test executables + 3 shared objects of cxxpkg + 1 of otherpkg, each library a problem: 6 + 3 + 1, and the requirement.
    expect(error.split('\n')).toEqual([
      'nix2oci: the image cannot run as built (11 problems):',
      '  unmet requirement: needy 1.0 requires numpy>=1.26, not found — add a wheel of numpy (--wheel), or a closure path with it in site-packages',
      `  ${GCC_LINE.replace('4 files', '7 files')}`,
      '  to list every problem: --problems FILE (or --json)',
      '  to build anyway, an image that may fail when it runs: --no-library-check (or checks.skipLibraries), --no-requirements-check (or checks.skipRequirements)',
      '',
    ]);
    // The test executables are one warning line, not one per file; the trap names the same fix.
    const warnings = result.stderr.split('\n').filter((l) => l.startsWith('warning: '));
    expect(warnings.filter((w) => w.includes('cxxpkg/tests'))).toEqual([
      'warning: cxxpkg-1.0-cp311-cp311-linux_x86_64.whl: 3 test executables (cxxpkg/tests/) run with /lib64/ld-linux-x86-64.so.2, which the image does not have; no import runs them',
    ]);
    expect(warnings.join('\n')).toMatch(/stdenv\.cc\.cc\.lib/);
  });

  it('writes every problem to --problems FILE atomically, and to --json, also when the build fails', () => {
    const out = join(dir, 'fail2.tar');
    const problemsFile = join(dir, 'problems.txt');
    writeFileSync(problemsFile, 'stale\n');
    const result = runCli(args(out, ['--problems', problemsFile, '--json']));
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`every problem is listed in ${problemsFile}`);
    const lines = readFileSync(problemsFile, 'utf8').trimEnd().split('\n');
    const listed = lines.filter((l) => !l.startsWith('#'));
    expect(listed.filter((l) => l.startsWith('error: '))).toHaveLength(11);
    expect(listed).toContain(
      "error: cxxpkg-1.0-cp311-cp311-linux_x86_64.whl: cxxpkg/tests/test_two needs libstdc++.so.6: not found — add gcc's runtime libraries to the closure (stdenv.cc.cc.lib)",
    );
    expect(listed).toContain(
      'warning: cxxpkg/tests/test_one (cxxpkg-1.0-cp311-cp311-linux_x86_64.whl) runs with /lib64/ld-linux-x86-64.so.2, which a Nix image does not have',
    );
    expect(lines).toContain(`# error: ${GCC_LINE.replace('4 files', '7 files')}`);
    // Nothing but the file itself is left beside it.
    expect(readFileSync(problemsFile, 'utf8')).not.toContain('stale');

    const json = JSON.parse(result.stdout) as { error: string; problems: { severity: string; kind: string; library?: string; distribution?: string; fix?: string }[] };
    expect(json.error).toMatch(/^the image cannot run as built \(11 problems\)/);
    const libs = json.problems.filter((p) => p.kind === 'missing-library');
    expect(libs).toHaveLength(10);
    expect(libs[0]).toMatchObject({ severity: 'error', library: 'libstdc++.so.6', distribution: 'cxxpkg', fix: "add gcc's runtime libraries to the closure (stdenv.cc.cc.lib)" });
    expect(json.problems.filter((p) => p.kind === 'foreign-interpreter')).toHaveLength(3);

    const bad = runCli(args(out, ['--problems', join(dir, 'no-such-dir', 'p.txt')]));
    expect(bad.code).toBe(1);
    expect(bad.stderr).toBe(`nix2oci: --problems ${join(dir, 'no-such-dir', 'p.txt')}: directory ${join(dir, 'no-such-dir')} does not exist\n`);
  });

  it('has a switch for each check, named for what it skips; --no-deps-check skips only the requirements', () => {
    const out = join(dir, 'switch.tar');
    const deps = runCli(args(out, ['--no-deps-check']));
    expect(deps.code).toBe(1);
    expect(deps.stderr).not.toMatch(/numpy/);
    expect(deps.stderr).toContain(GCC_LINE.replace('4 files', '7 files'));
    expect(existsSync(out)).toBe(false);

    const libs = runCli(args(out, ['--no-library-check']));
    expect(libs.code).toBe(1);
    expect(libs.stderr).toMatch(/nix2oci: the image cannot run as built \(1 problem\):\n {2}unmet requirement: needy 1\.0 requires numpy>=1\.26/);
    expect(libs.stderr).toContain(`warning: ${GCC_LINE.replace('4 files', '7 files')} (the library check is off)`);

    const both = cliOk(args(out, ['--no-library-check', '--no-requirements-check', '--json']));
    expect(existsSync(out)).toBe(true);
    const summary = JSON.parse(both.stdout) as { problems: { severity: string }[] };
    expect(summary.problems.length).toBeGreaterThan(10);
    expect(summary.problems.every((p) => p.severity === 'warning')).toBe(true);

    // The recipe's switches do the same.
    const recipe = join(dir, 'skip.json');
    writeFileSync(recipe, JSON.stringify({ checks: { skipLibraries: true, skipRequirements: true } }));
    cliOk(args(join(dir, 'recipe.tar'), ['--recipe', recipe]));
  });

  it('builds once the closure has gcc’s runtime and the requirement is met or skipped', () => {
    const out = join(dir, 'ok.tar');
    const result = cliOk(args(out, ['--no-requirements-check'], closureWithGcc));
    expect(existsSync(out)).toBe(true);
    expect(result.stderr).not.toMatch(/libstdc\+\+/);
  });
});
