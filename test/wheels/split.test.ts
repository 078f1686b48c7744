import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, lstatSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createGunzip } from 'node:zlib';
import { join } from 'node:path';
import tarStream from 'tar-stream';
import { writeLayer } from '../helpers/layers.js';
import type { LayerFile } from '../../src/layer/writer.js';
import { ElfCollector } from '../../src/wheels/checks/elf-collector.js';
import { SPLIT_THRESHOLD, wheelLayerSource, type WheelInstallOptions } from '../../src/wheels/install.js';
import { readWheelInfo } from '../../src/wheels/wheel-info.js';
import { cliOk, runCli } from '../helpers/cli.js';
import { podmanLoad, podmanRemove, podmanRun } from '../helpers/podman.js';
import { buildPythonClosure, canBuildPythonClosure, exportPythonClosure, type PythonClosure } from '../helpers/python-closure.js';
import { useScratchDirs } from '../helpers/scratch.js';
import { tools } from '../helpers/tools.js';
import { makeWheel, type MakeWheelOptions } from '../helpers/wheels.js';

/**
 * Giant files of a wheel in layers of their own (issue 5), with a 1 MiB threshold so that the test's
 * files can be small: two real CPython extension modules of a few MiB that link libz.so.1.
 */

const freshDir = useScratchDirs();
const MiB = 1 << 20;
const THRESHOLD = MiB;
const TAG = 'cp311-cp311-linux_x86_64';
const SO1 = 'bigpkg/_big1.cpython-311-x86_64-linux-gnu.so';
const SO2 = 'bigpkg/_big2.cpython-311-x86_64-linux-gnu.so';
const SITE = 'opt/python/lib/python3.11/site-packages';
const OPTIONS: WheelInstallOptions = { prefix: '/opt/python', pythonVersion: '3.11', interpreter: '/nix/store/00000000000000000000000000000000-python3/bin/python3.11', splitThreshold: THRESHOLD };

/** A CPython extension module named `name` that links libz.so.1 and carries `padding` bytes of read-only data. */
function extensionModule(dir: string, name: string, padding: number, fill: number): Buffer {
  const source = join(dir, `${name}.c`);
  writeFileSync(
    source,
    String.raw`#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <zlib.h>
__attribute__((used)) static const unsigned char padding[${padding}] = { ${Array.from({ length: 64 }, (_, i) => (fill + i * 7) % 256).join(', ')} };
static PyObject *info(PyObject *self, PyObject *args) {
  return PyUnicode_FromFormat("${name} %d zlib %s", (int)padding[0], zlibVersion());
}
static PyMethodDef methods[] = { {"info", info, METH_NOARGS, NULL}, {NULL, NULL, 0, NULL} };
static struct PyModuleDef module = { PyModuleDef_HEAD_INIT, "${name}", NULL, -1, methods };
PyMODINIT_FUNC PyInit_${name}(void) { return PyModule_Create(&module); }
`,
  );
  const so = join(dir, `${name}.so`);
  execFileSync('gcc', ['-shared', '-fPIC', '-O2', '-I/usr/include/python3.11', '-o', so, source, '-lz'], { stdio: ['ignore', 'ignore', 'pipe'] });
  return readFileSync(so);
}

interface Wheels {
  /** bigpkg 1.0: both modules, a launcher, small files. */
  v1: string;
  /** bigpkg 2.0: the same modules (one stored, not deflated) beside other small files. */
  v2: string;
  so1: Buffer;
  so2: Buffer;
}

function makeWheels(dir: string, extra: Partial<MakeWheelOptions> = {}): Wheels {
  const build = freshDir('nix2oci-bigext-');
  const so1 = extensionModule(build, '_big1', 3 * MiB / 2, 11);
  const so2 = extensionModule(build, '_big2', 5 * MiB / 2, 29);
  const common = { dir, name: 'bigpkg', tag: TAG, rootIsPurelib: false, entryPoints: { console_scripts: { 'bigpkg-info': 'bigpkg:main' } }, ...extra };
  const v1 = makeWheel({
    ...common,
    version: '1.0',
    files: {
      'bigpkg/__init__.py': 'from ._big1 import info as info1\nfrom ._big2 import info as info2\ndef main():\n    print(info1(), info2())\n',
      'bigpkg/data/small.txt': 'small\n',
      [SO1]: { content: so1, mode: 0o755 },
      [SO2]: { content: so2, mode: 0o755 },
    },
  });
  const v2 = makeWheel({
    ...common,
    version: '2.0',
    files: {
      'bigpkg/__init__.py': 'from ._big1 import info as info1\nfrom ._big2 import info as info2\nVERSION = 2\ndef main():\n    print(info1(), info2())\n',
      'bigpkg/extra.py': 'EXTRA = True\n',
      [SO1]: { content: so1, mode: 0o755, stored: true },
      [SO2]: { content: so2, mode: 0o755 },
    },
  });
  return { v1, v2, so1, so2 };
}

/** A tar's entries by name: type, mode and (for files) the bytes' sha256. */
type Listing = Map<string, { type: string; mode: number; sha256?: string }>;

async function listTar(file: string, gzip: boolean): Promise<{ names: string[]; entries: Listing }> {
  const extract = tarStream.extract();
  const names: string[] = [];
  const entries: Listing = new Map();
  const done = new Promise<void>((resolve, reject) => {
    extract.on('entry', (header, stream, next) => {
      const hash = createHash('sha256');
      stream.on('data', (chunk) => {
        hash.update(chunk as Buffer);
      });
      stream.on('end', () => {
        const name = header.name.replace(/\/$/, '');
        names.push(name);
        entries.set(name, { type: header.type!, mode: header.mode!, ...(header.type === 'file' && { sha256: hash.digest('hex') }) });
        next();
      });
      stream.on('error', reject);
    });
    extract.on('finish', resolve);
    extract.on('error', reject);
  });
  const input = createReadStream(file);
  (gzip ? input.pipe(createGunzip()) : input).pipe(extract);
  await done;
  return { names, entries };
}

async function writePieces(wheel: string, options: WheelInstallOptions = OPTIONS, compression: 'gzip' | 'none' = 'none') {
  const info = await readWheelInfo(wheel);
  const layer = wheelLayerSource(info, options);
  const dir = freshDir('nix2oci-split-');
  const blobs: LayerFile[] = [];
  for (const piece of layer.pieces) blobs.push(await writeLayer(piece.source, { compression, dir, mtime: 1 }));
  const whole = await writeLayer(layer.source, { compression, dir, mtime: 1 });
  return { info, layer, blobs, whole };
}

/** Every file, directory and symlink below `root`, with its mode and, for files, its bytes' sha256. */
function walk(root: string, below = ''): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of readdirSync(join(root, below)).sort()) {
    const rel = below ? `${below}/${name}` : name;
    const st = lstatSync(join(root, rel));
    const mode = (st.mode & 0o7777).toString(8);
    if (st.isDirectory()) {
      out[rel + '/'] = mode;
      Object.assign(out, walk(root, rel));
    } else {
      out[rel] = `${mode} ${st.isFile() ? createHash('sha256').update(readFileSync(join(root, rel))).digest('hex') : 'link'}`;
    }
  }
  return out;
}

const canCompile = tools('gcc', 'python3') && hasPythonHeaders();

function hasPythonHeaders(): boolean {
  try {
    readFileSync('/usr/include/python3.11/Python.h');
    return true;
  } catch {
    if (process.env.CI) throw new Error('the split tests need Debian\'s python3.11-dev headers (scripts/install-system-deps.sh)');
    return false;
  }
}

describe.runIf(canCompile)('a wheel’s giant files in layers of their own', () => {
  let wheels: Wheels;
  beforeAll(() => {
    wheels = makeWheels(freshDir('nix2oci-split-wheels-'));
  });

  it('defaults to 256 MiB', () => {
    expect(SPLIT_THRESHOLD).toBe(256 * MiB);
  });

  it('gives the main layer, then one layer per file of at least the threshold, by path', async () => {
    const { layer, blobs } = await writePieces(wheels.v1);
    expect(layer.pieces.map((p) => p.id)).toEqual(['main', `${SITE}/${SO1}`, `${SITE}/${SO2}`]);
    expect(layer.pieces.map((p) => p.split?.mode ?? null)).toEqual([null, 0o755, 0o755]);
    expect(layer.pieces.flatMap((p) => p.files).sort()).toEqual(layer.files);
    // A split-off layer: the file's parent directories and the file, nothing else.
    const { names } = await listTar(blobs[1]!.file, false);
    expect(names).toEqual(['opt', 'opt/python', 'opt/python/lib', 'opt/python/lib/python3.11', SITE, `${SITE}/bigpkg`, `${SITE}/${SO1}`]);
    const main = await listTar(blobs[0]!.file, false);
    expect(main.names).not.toContain(`${SITE}/${SO1}`);
    expect(main.names).not.toContain(`${SITE}/${SO2}`);
    expect(main.names).toEqual(expect.arrayContaining(['opt/python/bin/bigpkg-info', `${SITE}/bigpkg-1.0.dist-info/RECORD`, `${SITE}/bigpkg-1.0.dist-info/INSTALLER`, `${SITE}/bigpkg/__init__.py`]));
  });

  it('with no file at the threshold, gives one layer: the unsplit install', async () => {
    const { layer, blobs, whole } = await writePieces(wheels.v1, { ...OPTIONS, splitThreshold: Infinity });
    expect(layer.pieces.map((p) => p.id)).toEqual(['main']);
    expect(blobs[0]!.digest).toBe(whole.digest);
  });

  it('the layers together hold exactly the unsplit install: same entries, bytes and modes, and the same RECORD', async () => {
    const { blobs, whole } = await writePieces(wheels.v1);
    const unsplit = await listTar(whole.file, false);
    const merged: Listing = new Map();
    for (const blob of blobs) {
      for (const [name, entry] of (await listTar(blob.file, false)).entries) {
        const before = merged.get(name);
        if (before) {
          expect(entry.type).toBe('directory');
          expect(entry).toEqual(before);
        }
        merged.set(name, entry);
      }
    }
    expect(new Map([...merged].sort())).toEqual(new Map([...unsplit.entries].sort()));
    expect(merged.get(`${SITE}/${SO1}`)?.sha256).toBe(createHash('sha256').update(wheels.so1).digest('hex'));
    const record = `${SITE}/bigpkg-1.0.dist-info/RECORD`;
    expect((await listTar(blobs[0]!.file, false)).entries.get(record)).toEqual(unsplit.entries.get(record));

    // Unpacked in order, as a runtime stacks them: the unsplit tree.
    const stacked = freshDir('nix2oci-stacked-');
    for (const blob of blobs) execFileSync('tar', ['-xf', blob.file, '-C', stacked]);
    const single = freshDir('nix2oci-single-');
    execFileSync('tar', ['-xf', whole.file, '-C', single]);
    expect(walk(stacked)).toEqual(walk(single));
    const recordText = readFileSync(join(stacked, record), 'utf8');
    expect(recordText).toContain(`bigpkg/_big1.cpython-311-x86_64-linux-gnu.so,sha256=${createHash('sha256').update(wheels.so1).digest('base64url')},${wheels.so1.length}\n`);
  });

  it('a split-off layer has the same digest when the same file comes in another wheel', async () => {
    const one = await writePieces(wheels.v1, OPTIONS, 'gzip');
    const two = await writePieces(wheels.v2, OPTIONS, 'gzip');
    expect(two.layer.pieces.map((p) => p.id)).toEqual(one.layer.pieces.map((p) => p.id));
    expect(two.blobs[1]!.digest).toBe(one.blobs[1]!.digest);
    expect(two.blobs[2]!.digest).toBe(one.blobs[2]!.digest);
    expect(two.blobs[2]!.diffId).toBe(one.blobs[2]!.diffId);
    expect(two.blobs[0]!.digest).not.toBe(one.blobs[0]!.digest);
  });

  it('a corrupted giant entry is caught by RECORD verification in its own layer, with the one-line error', async () => {
    const dir = freshDir('nix2oci-split-bad-');
    const bad = makeWheels(dir, { corrupt: { tamper: SO2 } }).v1;
    const info = await readWheelInfo(bad);
    const layer = wheelLayerSource(info, OPTIONS);
    const out = freshDir('nix2oci-split-bad-out-');
    // The main layer does not read the split-off file: RECORD comes from the wheel's hashes.
    await writeLayer(layer.pieces[0]!.source, { compression: 'none', dir: out, mtime: 1 });
    await writeLayer(layer.pieces[1]!.source, { compression: 'none', dir: out, mtime: 1 });
    const failed = writeLayer(layer.pieces[2]!.source, { compression: 'none', dir: out, mtime: 1 });
    await expect(failed).rejects.toThrow(new RegExp(`^${escape(bad)}: entry ${escape(SO2)} does not match RECORD: RECORD says sha256=\\S+, the entry has sha256=\\S+$`));
    await expect(writeLayer(layer.source, { compression: 'none', dir: out, mtime: 1 })).rejects.toThrow(/does not match RECORD/);
  });

  it('the library check’s ELF facts cover the split-off files, each piece on its own', async () => {
    const info = await readWheelInfo(wheels.v1);
    const collectors = new Map<string, ElfCollector>();
    const layer = wheelLayerSource(info, { ...OPTIONS, inspect: ({ path, entry }) => collectors.get(path)!.entry(info.file, entry.name, path) });
    const perPiece = layer.pieces.map((piece) => {
      const elf = new ElfCollector();
      for (const path of piece.files) collectors.set(path, elf);
      return elf;
    });
    const dir = freshDir('nix2oci-split-elf-');
    for (const piece of layer.pieces) await writeLayer(piece.source, { compression: 'none', dir, mtime: 1 });
    const found = await Promise.all(perPiece.map((elf) => elf.finish()));
    expect(found.map((objects) => objects.map((o) => [o.entry, o.facts.needed.includes('libz.so.1')]))).toEqual([[], [[SO1, true]], [[SO2, true]]]);
  });
});

const e2eReady = canCompile && canBuildPythonClosure() && tools('nix-build', 'nix-store', 'umoci', 'podman', 'runc');

describe.runIf(e2eReady)('split wheel layers in built images', () => {
  let dir: string;
  let python: PythonClosure;
  let withZlib: string;
  let withoutZlib: string;
  let wheels: Wheels;
  const loaded: string[] = [];
  const split = ['--wheel-split-size', String(THRESHOLD)];
  const v1 = 'bigpkg-1.0-cp311-cp311-linux_x86_64.whl';

  beforeAll(() => {
    dir = freshDir('nix2oci-split-e2e-');
    python = buildPythonClosure({ zlib: true });
    withZlib = exportPythonClosure(python, join(dir, 'with-zlib')).closureFile;
    withoutZlib = exportPythonClosure(buildPythonClosure(), join(dir, 'without-zlib')).closureFile;
    mkdirSync(join(dir, 'wheels'));
    wheels = makeWheels(join(dir, 'wheels'));
  });
  afterAll(() => podmanRemove(...loaded));

  interface Summary {
    manifestDigest: string;
    layers: { digest: string; contents: string[]; reused: boolean }[];
  }
  const build = (args: string[], extra: string[] = split) => JSON.parse(cliOk(['build-image', '-q', '--json', ...args, ...extra]).stdout) as Summary;
  const wheelLayers = (s: Summary) => s.layers.filter((l) => l.contents[0]!.includes('.whl')).map((l) => [l.contents.join(', '), l.reused]);

  it('builds one layer per piece, reuses every piece on a rebuild, and the split-off ones for another wheel', () => {
    const cache = join(dir, 'cache');
    const out = () => join(dir, `out-${Math.random()}.tar`);
    const cold = build(['--closure', withZlib, '--cache-dir', cache, '--wheel', wheels.v1, '--output', out()]);
    expect(wheelLayers(cold)).toEqual([[v1, false], [`${v1}: ${SO1}`, false], [`${v1}: ${SO2}`, false]]);
    const warm = build(['--closure', withZlib, '--cache-dir', cache, '--wheel', wheels.v1, '--output', out()]);
    expect(wheelLayers(warm)).toEqual([[v1, true], [`${v1}: ${SO1}`, true], [`${v1}: ${SO2}`, true]]);
    expect(warm.manifestDigest).toBe(cold.manifestDigest);

    const v2 = 'bigpkg-2.0-cp311-cp311-linux_x86_64.whl';
    const other = build(['--closure', withZlib, '--cache-dir', cache, '--wheel', wheels.v2, '--output', out()]);
    expect(wheelLayers(other)).toEqual([[v2, false], [`${v2}: ${SO1}`, true], [`${v2}: ${SO2}`, true]]);
    expect(other.layers.slice(-3, -1).map((l) => l.digest)).toEqual(cold.layers.slice(-3, -1).map((l) => l.digest));
    // From the cache or not, the same image.
    expect(build(['--closure', withZlib, '--cache-dir', join(dir, 'cache-fresh'), '--wheel', wheels.v2, '--output', out()]).manifestDigest).toBe(other.manifestDigest);
    // --max-layers counts every piece: 3 for the wheel, 1 for the root, 1 left for the store paths.
    const tight = build(['--closure', withZlib, '--cache-dir', cache, '--wheel', wheels.v1, '--max-layers', '5', '--output', out()]);
    expect(tight.layers).toHaveLength(5);
    const tooTight = runCli([...['build-image', '-q', '--closure', withZlib, '--cache-dir', cache, '--wheel', wheels.v1, '--max-layers', '4', '--output', out()], ...split]);
    expect(tooTight.code).toBe(1);
    expect(tooTight.stderr).toContain('--max-layers 4 leaves no layer for store paths (4 reserved for the image root and wheels)');
  });

  it('umoci unpacks the same tree as the unsplit build’s; inspect names each piece; the image runs', () => {
    const layouts = { split: join(dir, 'split-layout'), whole: join(dir, 'whole-layout') };
    build(['--closure', withZlib, '--no-cache', '--wheel', wheels.v1, '--format', 'oci-layout', '--tag', 'nix2oci/split:latest', '--output', layouts.split]);
    const whole = build(['--closure', withZlib, '--no-cache', '--wheel', wheels.v1, '--format', 'oci-layout', '--tag', 'nix2oci/split:latest', '--output', layouts.whole], []);
    expect(wheelLayers(whole)).toEqual([[v1, false]]);
    const trees = Object.fromEntries(
      Object.entries(layouts).map(([kind, layout]) => {
        const bundle = join(dir, `bundle-${kind}`);
        execFileSync('umoci', ['unpack', '--image', `${layout}:nix2oci/split:latest`, bundle], { stdio: 'pipe' });
        return [kind, walk(join(bundle, 'rootfs'), 'opt')];
      }),
    );
    expect(trees.split).toEqual(trees.whole);
    expect(trees.split![`opt/python/lib/python3.11/site-packages/${SO2}`]).toBe(`755 ${createHash('sha256').update(wheels.so2).digest('hex')}`);

    const archive = join(dir, 'split.tar');
    build(['--closure', withZlib, '--no-cache', '--wheel', wheels.v1, '--output', archive]);
    const shown = cliOk(['inspect', archive]).stdout;
    expect(shown).toContain(`${v1}: ${SO1}`);
    expect(shown).toContain(`${v1}: ${SO2}`);
    const id = podmanLoad(archive);
    loaded.push(id);
    expect(podmanRun(id, [python.interpreter, '-c', 'import bigpkg; bigpkg.main()'])).toMatch(/^_big1 11 zlib \S+ _big2 29 zlib \S+\n$/);
  });

  it('the library check sees a split-off module’s DT_NEEDED, fresh and from the cache', () => {
    const cache = join(dir, 'cache-libs');
    const args = ['build-image', '-q', '--json', '--closure', withoutZlib, '--cache-dir', cache, '--wheel', wheels.v1, '--output', join(dir, 'fails.tar')];
    // The split-off layers are cached by a build that passes, then the check runs on cached facts.
    const ok = runCli([...['build-image', '-q', '--closure', withZlib, '--cache-dir', cache, '--wheel', wheels.v1, '--output', join(dir, 'passes.tar')], ...split]);
    expect(ok.code).toBe(0);
    const fresh = runCli([...['build-image', '-q', '--json', '--closure', withoutZlib, '--no-cache', '--wheel', wheels.v1, '--output', join(dir, 'fails.tar')], ...split]);
    const cached = runCli([...args, ...split]);
    expect(fresh.code).toBe(1);
    const { problems } = JSON.parse(fresh.stdout) as { problems: { severity: string; message: string }[] };
    const errors = problems.filter((p) => p.severity === 'error').map((p) => p.message);
    expect(errors).toContain(`${v1}: ${SO1} needs libz.so.1: not found`);
    expect(errors).toContain(`${v1}: ${SO2} needs libz.so.1: not found`);
    expect(fresh.stderr).toContain('libz.so.1: needed by 2 files in 1 wheel (bigpkg) — add zlib to the closure (zlib)');
    expect(cached).toEqual(fresh);
  });
});

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
