import { describe, it, expect, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UserError } from '../../src/util/errors.js';
import { parseWheelFileName } from '../../src/wheels/filename.js';
import { parseCoreMetadata, parseEntryPoints } from '../../src/wheels/metadata.js';
import { formatRecordLine, parseRecord } from '../../src/wheels/record.js';
import { relativeName } from '../../src/wheels/install.js';
import { readWheelInfo } from '../../src/wheels/wheel-info.js';
import { makeWheel } from '../helpers/wheels.js';

const PIP_WHEEL = readdirSync('/usr/share/python-wheels')
  .filter((f) => /^pip-.*\.whl$/.test(f))
  .map((f) => join('/usr/share/python-wheels', f))[0]!;

/** Temporary directories, removed after the tests. */
const scratch: string[] = [];
afterAll(() => {
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
});

function freshDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'nix2oci-info-'));
  scratch.push(dir);
  return dir;
}

describe('readWheelInfo', () => {
  it('reads Debian’s pip wheel: names, tags, metadata, entry points, every entry with its RECORD hash, the file’s sha256', async () => {
    const info = await readWheelInfo(PIP_WHEEL);
    expect(info.name).toBe('pip');
    expect(info.tags).toEqual([{ python: 'py3', abi: 'none', platform: 'any' }]);
    expect(info.wheelVersion).toBe('1.0');
    expect(info.rootIsPurelib).toBe(true);
    expect(info.distInfoDir).toBe(`pip-${info.version}.dist-info`);
    expect(info.metadata.requiresPython).toBe('>=3.7');
    expect(info.metadata.raw).toMatch(/^Metadata-Version: /);
    expect(info.entryPoints.console_scripts.map((p) => p.name)).toEqual(['pip', 'pip3', 'pip3.11']);
    expect(info.entryPoints.console_scripts[0]).toEqual({ name: 'pip', module: 'pip._internal.cli.main', attr: 'main' });
    expect(info.sha256).toBe(execFileSync('sha256sum', [PIP_WHEEL], { encoding: 'utf8' }).split(' ')[0]);

    // Python's zipfile agrees on names and sizes; RECORD's hash is attached to every file but RECORD.
    const listing = JSON.parse(
      execFileSync('python3', ['-c', 'import json, sys, zipfile; print(json.dumps([[i.filename, i.file_size] for i in zipfile.ZipFile(sys.argv[1]).infolist()]))', PIP_WHEEL], {
        encoding: 'utf8',
      }),
    ) as [string, number][];
    expect(info.entries.map((e) => [e.name, e.size])).toEqual([...listing].sort((a, b) => (a[0] < b[0] ? -1 : 1)));
    for (const entry of info.entries) {
      if (entry.name.endsWith('/RECORD')) expect(entry.sha256).toBeNull();
      else expect(entry.sha256).toMatch(/^[0-9a-f]{64}$/);
    }
  });

  it('expands compressed tag sets and normalises the name', async () => {
    const wheel = makeWheel({ dir: freshDir(), name: 'Typing_Extensions', version: '4.0', tag: 'py2.py3-none-any', files: { 'typing_extensions.py': '' } });
    const info = await readWheelInfo(wheel);
    expect(info.name).toBe('typing-extensions');
    expect(info.tags).toEqual([
      { python: 'py2', abi: 'none', platform: 'any' },
      { python: 'py3', abi: 'none', platform: 'any' },
    ]);
  });

  it('refuses a METADATA whose name or version differs from the file name', async () => {
    const dir = freshDir();
    const wheel = makeWheel({ dir, name: 'demo', version: '1.0', metadataName: 'other', files: { 'demo.py': '' } });
    await expect(readWheelInfo(wheel)).rejects.toThrow(new UserError(`${wheel}: other-1.0.dist-info is for project other, the file name says demo`));
  });

  it('refuses file names that are not wheel names', () => {
    expect(() => parseWheelFileName('/x/demo-1.0.tar.gz')).toThrow('/x/demo-1.0.tar.gz: not a wheel file name (it does not end in .whl;');
    expect(() => parseWheelFileName('demo-1.0-any.whl')).toThrow('3 dash-separated parts');
    expect(parseWheelFileName('vllm-0.12.0+rocm711-1build-cp311-cp311-linux_x86_64.whl')).toMatchObject({ version: '0.12.0+rocm711', build: '1build' });
  });
});

describe('RECORD', () => {
  it('reads quoted CSV fields as Python’s csv module writes them, and writes them back the same way', () => {
    const text = 'a/b.py,sha256=' + 'A'.repeat(43) + ',3\r\n"we,ird ""name"".py",sha256=' + 'B'.repeat(43) + ',5\nx.dist-info/RECORD,,\n';
    const rows = parseRecord(text, 'RECORD');
    expect(rows.map((r) => r.path)).toEqual(['a/b.py', 'we,ird "name".py', 'x.dist-info/RECORD']);
    expect(rows[0]!.hash).toEqual({ algorithm: 'sha256', hex: '0'.repeat(64) });
    expect(rows[2]).toEqual({ path: 'x.dist-info/RECORD', hash: null, size: null });
    expect(formatRecordLine('we,ird "name".py', 'sha256=x', 5)).toBe('"we,ird ""name"".py",sha256=x,5\n');
  });

  it('refuses md5, malformed hashes and sizes, naming the line', () => {
    expect(() => parseRecord('a.py,md5=abc,1\n', 'w.whl: RECORD')).toThrow('w.whl: RECORD: line 1: a.py has hash "md5=abc"; RECORD hashes must be sha256, sha384 or sha512');
    expect(() => parseRecord('a.py,sha256=abc,1\n', 'R')).toThrow('R: line 1: a.py has a malformed sha256 hash');
    expect(() => parseRecord('ok,,\na.py,,12x\n', 'R')).toThrow('R: line 2: a.py has size "12x", not a number');
  });
});

describe('METADATA and entry_points.txt', () => {
  it('reads repeated and folded headers, stopping at the body', () => {
    const meta = parseCoreMetadata('Name: demo\nVersion: 1\nRequires-Dist: a>=1\nRequires-Dist: b; extra == "x"\nProvides-Extra: x\nSummary: one\n  two\n\nRequires-Dist: not-a-header\n');
    expect(meta).toEqual({ name: 'demo', version: '1', requiresDist: ['a>=1', 'b; extra == "x"'], providesExtra: ['x'] });
  });

  it('reads console and gui scripts with extras and attributes; refuses names that are paths', () => {
    const points = parseEntryPoints('[console_scripts]\nfoo = pkg.cli:main [extra]\nbar=pkg:Cls.run\n\n[gui_scripts]\nwin = pkg.gui:start\n[other.group]\nplugin = x:y\n', 'E');
    expect(points.console_scripts).toEqual([
      { name: 'foo', module: 'pkg.cli', attr: 'main' },
      { name: 'bar', module: 'pkg', attr: 'Cls.run' },
    ]);
    expect(points.gui_scripts).toEqual([{ name: 'win', module: 'pkg.gui', attr: 'start' }]);
    expect(() => parseEntryPoints('[console_scripts]\n../evil = x:y\n', 'E')).toThrow('E: line 2: entry point name "../evil" is not a file name');
  });
});

describe('install paths', () => {
  it('writes RECORD paths relative to site-packages as pip does', () => {
    const site = 'opt/python/lib/python3.11/site-packages';
    expect(relativeName(site, 'opt/python/bin/pip')).toBe('../../../bin/pip');
    expect(relativeName(site, `${site}/pip/__init__.py`)).toBe('pip/__init__.py');
    expect(relativeName(site, 'opt/python/include/python3.11/demo/demo.h')).toBe('../../../include/python3.11/demo/demo.h');
  });
});
