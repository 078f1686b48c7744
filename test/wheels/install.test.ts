import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, realpathSync, statSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeLayer } from '../helpers/layers.js';
import type { LayerFile } from '../../src/layer/writer.js';
import { ElfCollector } from '../../src/wheels/checks/elf-collector.js';
import { wheelLayerSource, type WheelInstallOptions } from '../../src/wheels/install.js';
import { readWheelInfo } from '../../src/wheels/wheel-info.js';
import { makeWheel } from '../helpers/wheels.js';
import { gnuTarList } from '../tar/tar-tools.js';

const PIP_WHEEL = readdirSync('/usr/share/python-wheels')
  .filter((f) => /^pip-.*\.whl$/.test(f))
  .map((f) => join('/usr/share/python-wheels', f))[0]!;
const SETUPTOOLS_WHEEL = readdirSync('/usr/share/python-wheels')
  .filter((f) => /^setuptools-.*\.whl$/.test(f))
  .map((f) => join('/usr/share/python-wheels', f))[0]!;
/** The machine's Python stands in for the image's: same major.minor, real path for shebangs. */
const PYTHON = execFileSync('python3', ['-c', 'import sys; print(sys.executable)'], { encoding: 'utf8' }).trim();
const PYTHON_VERSION = execFileSync('python3', ['-c', 'import sys; print("%d.%d" % sys.version_info[:2])'], { encoding: 'utf8' }).trim();
const OPTIONS: WheelInstallOptions = { prefix: '/opt/python', pythonVersion: PYTHON_VERSION, interpreter: PYTHON };
const SITE = `opt/python/lib/python${PYTHON_VERSION}/site-packages`;

/** Temporary directories, removed after the tests. */
const scratch: string[] = [];
afterAll(() => {
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
});

function freshDir(prefix = 'nix2oci-wheel-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  scratch.push(dir);
  return dir;
}

async function installToLayer(wheel: string, options: WheelInstallOptions = OPTIONS, compression: 'gzip' | 'none' = 'none') {
  const info = await readWheelInfo(wheel);
  const layer = wheelLayerSource(info, options);
  const dir = freshDir();
  const blob = await writeLayer(layer.source, { compression, dir, mtime: 1 });
  return { info, layer, blob, dir };
}

function unpack(blob: LayerFile & { compression: string }): string {
  const root = freshDir('nix2oci-unpacked-');
  execFileSync('tar', ['-xf', blob.file, '-C', root, ...(blob.compression === 'gzip' ? ['-z'] : [])]);
  return root;
}

function sha256b64(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('base64url');
}

describe('installing pip from Debian’s wheel into a layer', () => {
  let root: string;
  let blob: LayerFile & { compression: string };
  let layer: ReturnType<typeof wheelLayerSource>;

  beforeAll(async () => {
    ({ blob, layer } = await installToLayer(PIP_WHEEL));
    root = unpack(blob);
  });

  it('imports from the unpacked site-packages and runs', () => {
    const out = execFileSync('python3', ['-m', 'pip', '--version'], {
      encoding: 'utf8',
      env: { ...process.env, PYTHONPATH: join(root, SITE), PYTHONNOUSERSITE: '1', PIP_DISABLE_PIP_VERSION_CHECK: '1' },
    });
    expect(out).toContain(join(root, SITE, 'pip'));
    expect(layer.sitePackages).toBe('/' + SITE);
    expect(layer.binDir).toBe('/opt/python/bin');
  });

  it('writes console-script launchers, executable, with the interpreter’s shebang, that run', () => {
    for (const name of ['pip', 'pip3', `pip${PYTHON_VERSION}`]) {
      const path = join(root, 'opt/python/bin', name);
      expect(statSync(path).mode & 0o777).toBe(0o755);
      const text = readFileSync(path, 'utf8');
      expect(text.split('\n')[0]).toBe(`#!${PYTHON}`);
      expect(text).toContain('from pip._internal.cli.main import main');
    }
    const out = execFileSync(join(root, 'opt/python/bin/pip'), ['--version'], {
      encoding: 'utf8',
      env: { ...process.env, PYTHONPATH: join(root, SITE), PIP_DISABLE_PIP_VERSION_CHECK: '1' },
    });
    expect(out).toMatch(/^pip 23\./);
  });

  it('writes INSTALLER and a RECORD that matches every installed file', () => {
    const distInfo = readdirSync(join(root, SITE)).find((d) => d.endsWith('.dist-info'))!;
    expect(readFileSync(join(root, SITE, distInfo, 'INSTALLER'), 'utf8')).toBe('nix2oci\n');
    const rows = readFileSync(join(root, SITE, distInfo, 'RECORD'), 'utf8').trimEnd().split('\n').map((l) => l.split(','));
    const installed = new Set(
      execFileSync('find', [root, '-type', 'f'], { encoding: 'utf8' })
        .trim()
        .split('\n')
        .map((p) => p.slice(root.length + 1)),
    );
    expect(rows.length).toBe(installed.size);
    for (const [path, hash, size] of rows) {
      const full = join(root, SITE, path!);
      expect(installed.has(join(SITE, path!))).toBe(true);
      if (path === `${distInfo}/RECORD`) {
        expect([hash, size]).toEqual(['', '']);
        continue;
      }
      const bytes = readFileSync(full);
      expect(hash).toBe(`sha256=${sha256b64(bytes)}`);
      expect(Number(size)).toBe(bytes.length);
    }
    expect(rows.map((r) => r[0])).toContain('../../../bin/pip3');
  });

  it('is read back by the installed pip itself (pip show -f lists the launchers from RECORD)', () => {
    const env = { ...process.env, PYTHONPATH: join(root, SITE), PYTHONNOUSERSITE: '1', PIP_DISABLE_PIP_VERSION_CHECK: '1' };
    const show = execFileSync('python3', ['-m', 'pip', 'show', '-f', 'pip'], { encoding: 'utf8', env });
    expect(show).toMatch(/^Name: pip$/m);
    expect(show).toContain('../../../bin/pip3');
  });

  it('lays out the tar deterministically: sorted, each directory once before its contents, fixed modes and mtime', () => {
    const list = gnuTarList(blob.file);
    const names = list.map((e) => e.name);
    expect(names.slice(0, 4)).toEqual(['opt', 'opt/python', 'opt/python/bin', 'opt/python/bin/pip']);
    expect(new Set(names).size).toBe(names.length);
    expect([...names].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))).toEqual(names);
    for (const entry of list) {
      expect(entry.mtime).toBe('1970-01-01 00:00:01');
      expect(entry.owner).toBe('0/0');
      if (entry.type === 'directory') expect(entry.mode).toBe(0o755);
      else expect([0o644, 0o755]).toContain(entry.mode);
    }
  });
});

describe('installing setuptools', () => {
  it('imports and reports the unpacked location; the same wheel gives the same layer digest every time', async () => {
    const first = await installToLayer(SETUPTOOLS_WHEEL, OPTIONS, 'gzip');
    const second = await installToLayer(SETUPTOOLS_WHEEL, OPTIONS, 'gzip');
    expect(second.blob.diffId).toBe(first.blob.diffId);
    expect(second.blob.digest).toBe(first.blob.digest);
    const root = unpack(first.blob);
    const out = execFileSync('python3', ['-c', 'import setuptools, pkg_resources; print(setuptools.__file__)'], {
      encoding: 'utf8',
      env: { ...process.env, PYTHONPATH: join(root, SITE), PYTHONNOUSERSITE: '1' },
    });
    expect(out.trim()).toBe(join(root, SITE, 'setuptools/__init__.py'));
  });
});

describe('determinism', () => {
  it('gives the same layer for the same contents whatever the zip’s entry order, compression or directory entries', async () => {
    const files: Record<string, string> = { 'b/mod.py': 'B = 2\n', 'a/__init__.py': 'A = 1\n', 'a/z.txt': 'z\n'.repeat(1000), 'c.py': '' };
    const reversed = Object.fromEntries(Object.entries(files).reverse());
    const one = makeWheel({ dir: freshDir(), name: 'order', version: '1', files, entryPoints: { console_scripts: { x: 'a:main', y: 'b.mod:main' } } });
    const two = makeWheel({
      dir: freshDir(),
      name: 'order',
      version: '1',
      files: reversed,
      compression: 'stored',
      dirEntries: true,
      entryPoints: { console_scripts: { x: 'a:main', y: 'b.mod:main' } },
    });
    const [a, b] = [await installToLayer(one), await installToLayer(two)];
    expect(b.info.sha256).not.toBe(a.info.sha256);
    expect(b.blob.diffId).toBe(a.blob.diffId);
  });
});

describe('installing .data directories', () => {
  it('puts scripts in bin with #!python rewritten, headers under include, data under the prefix, purelib/platlib in site-packages', async () => {
    const dir = freshDir();
    const wheel = makeWheel({
      dir,
      name: 'demo_pkg',
      version: '1.2',
      tag: `cp${PYTHON_VERSION.replace('.', '')}-cp${PYTHON_VERSION.replace('.', '')}-linux_x86_64`,
      rootIsPurelib: false,
      files: {
        'demo_pkg/__init__.py': 'def main():\n    print("demo main")\n',
        'demo_pkg/_native.so': { content: Buffer.from([0x7f, 0x45, 0x4c, 0x46, 1, 2, 3]), mode: 0o755 },
      },
      dataScripts: {
        'demo-run': '#!python\nimport demo_pkg, demo_extra\nprint("run", demo_extra.X)\n',
        'demo-gui': '#!pythonw -E\nprint("gui")\n',
        'demo-sh': { content: '#!/bin/sh\necho shell\n', mode: 0o644 },
      },
      data: {
        headers: { 'demo.h': '#define DEMO 1\n' },
        data: { 'share/demo/readme.txt': 'data file\n' },
        purelib: { 'demo_extra.py': 'X = 42\n' },
        platlib: { 'demo_plat/__init__.py': '' },
      },
      entryPoints: { console_scripts: { 'demo-cli': 'demo_pkg:main' }, gui_scripts: { 'demo-window': 'demo_pkg:main' } },
    });
    const { blob } = await installToLayer(wheel);
    const root = unpack(blob);
    const env = { ...process.env, PYTHONPATH: join(root, SITE) };

    const run = join(root, 'opt/python/bin/demo-run');
    expect(readFileSync(run, 'utf8')).toBe(`#!${PYTHON}\nimport demo_pkg, demo_extra\nprint("run", demo_extra.X)\n`);
    expect(statSync(run).mode & 0o777).toBe(0o755);
    expect(execFileSync(run, { encoding: 'utf8', env })).toBe('run 42\n');
    expect(readFileSync(join(root, 'opt/python/bin/demo-gui'), 'utf8')).toBe(`#!${PYTHON}\nprint("gui")\n`);
    expect(readFileSync(join(root, 'opt/python/bin/demo-sh'), 'utf8')).toBe('#!/bin/sh\necho shell\n');
    expect(statSync(join(root, 'opt/python/bin/demo-sh')).mode & 0o777).toBe(0o755);
    expect(execFileSync(join(root, 'opt/python/bin/demo-cli'), { encoding: 'utf8', env })).toBe('demo main\n');
    expect(execFileSync(join(root, 'opt/python/bin/demo-window'), { encoding: 'utf8', env })).toBe('demo main\n');

    expect(readFileSync(join(root, `opt/python/include/python${PYTHON_VERSION}/demo-pkg/demo.h`), 'utf8')).toBe('#define DEMO 1\n');
    expect(readFileSync(join(root, 'opt/python/share/demo/readme.txt'), 'utf8')).toBe('data file\n');
    expect(existsSync(join(root, SITE, 'demo_plat/__init__.py'))).toBe(true);
    expect(statSync(join(root, SITE, 'demo_pkg/_native.so')).mode & 0o777).toBe(0o755);
    expect(statSync(join(root, SITE, 'demo_pkg/__init__.py')).mode & 0o777).toBe(0o644);
    expect(existsSync(join(root, SITE, 'demo_pkg-1.2.data'))).toBe(false);

    // The rewritten script's RECORD row is the installed file's hash, not the wheel's.
    const record = readFileSync(join(root, SITE, 'demo_pkg-1.2.dist-info/RECORD'), 'utf8');
    const runRow = record.split('\n').find((l) => l.startsWith('../../../bin/demo-run,'))!;
    expect(runRow).toBe(`../../../bin/demo-run,sha256=${sha256b64(readFileSync(run))},${statSync(run).size}`);
    expect(record).toContain(`../../../include/python${PYTHON_VERSION}/demo-pkg/demo.h,`);
    expect(record).toContain('../../../share/demo/readme.txt,');
  });

  it('uses a /bin/sh trampoline when the interpreter path is too long for a #! line', async () => {
    const dir = freshDir();
    const wheel = makeWheel({ dir, name: 'longpy', version: '1', files: { 'longpy.py': 'def main(): print("ok")\n' }, entryPoints: { console_scripts: { longpy: 'longpy:main' } } });
    const interpreter = '/nix/store/' + 'x'.repeat(130) + '/bin/python3';
    const { blob } = await installToLayer(wheel, { ...OPTIONS, interpreter });
    const text = readFileSync(join(unpack(blob), 'opt/python/bin/longpy'), 'utf8');
    expect(text.startsWith(`#!/bin/sh\n'''exec' "${interpreter}" "$0" "$@"\n' '''\n`)).toBe(true);
  });
});

describe('the inspect hook', () => {
  it('sees every installed file’s bytes in the install pass: ElfCollector reads a real library’s SONAME', async () => {
    const libz = realpathSync('/usr/lib/x86_64-linux-gnu/libz.so.1');
    const wheel = makeWheel({
      dir: freshDir(),
      name: 'zdemo',
      version: '1',
      tag: 'cp311-cp311-linux_x86_64',
      files: { 'zdemo/__init__.py': '', 'zdemo/libz.so.1': { content: readFileSync(libz), mode: 0o755 } },
    });
    const info = await readWheelInfo(wheel);
    const collector = new ElfCollector();
    const seen = new Map<string, { bytes: number; ended: boolean }>();
    const layer = wheelLayerSource(info, {
      ...OPTIONS,
      inspect: ({ path, entry }) => {
        const tap = collector.entry(info.file, entry.name, path);
        const record = { bytes: 0, ended: false };
        seen.set(path, record);
        return {
          push: (chunk) => {
            record.bytes += chunk.length;
            tap.push(chunk);
          },
          end: () => {
            record.ended = true;
            tap.end();
          },
        };
      },
    });
    await writeLayer(layer.source, { compression: 'none', dir: freshDir(), mtime: 1 });
    const lib = `/${SITE}/zdemo/libz.so.1`;
    expect(seen.get(lib)).toEqual({ bytes: statSync(libz).size, ended: true });
    expect([...seen.keys()].every((p) => p.startsWith(`/${SITE}/`))).toBe(true);
    const objects = await collector.finish();
    expect(objects.map((o) => [o.entry, o.imagePath, o.facts.soname])).toEqual([['zdemo/libz.so.1', lib, 'libz.so.1']]);
  });
});

describe('a layer’s size before it is written', () => {
  it('is what the layer measures, for every piece of real wheels (long names, launchers, split-off files)', async () => {
    for (const wheel of [PIP_WHEEL, SETUPTOOLS_WHEEL]) {
      const info = await readWheelInfo(wheel);
      // A low threshold splits several files off, so the split-off pieces are measured too.
      const layer = wheelLayerSource(info, { ...OPTIONS, splitThreshold: 64 << 10 });
      expect(layer.pieces.length).toBeGreaterThan(1);
      for (const piece of layer.pieces) {
        const blob = await writeLayer(piece.source, { compression: 'none', dir: freshDir(), mtime: 1_700_000_000 });
        expect(piece.tarSize(1_700_000_000)).toBe(blob.size);
      }
    }
  });

  it('is unknown for the layer that holds a #!python script (rewritten as it streams) and its RECORD', async () => {
    const wheel = makeWheel({
      dir: freshDir(),
      name: 'scripted',
      version: '1',
      files: { 'scripted/__init__.py': 'X = 1\n', 'scripted/big.bin': { content: Buffer.alloc(100_000, 7) } },
      dataScripts: { 'scripted-run': '#!python\nimport scripted\n' },
    });
    const info = await readWheelInfo(wheel);
    const layer = wheelLayerSource(info, { ...OPTIONS, splitThreshold: 50_000 });
    const [main, split] = layer.pieces;
    expect(main!.tarSize(1)).toBeNull();
    // The split-off file's layer holds no script: its size is known.
    const blob = await writeLayer(split!.source, { compression: 'none', dir: freshDir(), mtime: 1 });
    expect(split!.tarSize(1)).toBe(blob.size);
  });
});
