import { describe, it, expect, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeLayer } from '../helpers/layers.js';
import { UserError } from '../../src/util/errors.js';
import { wheelLayerSource } from '../../src/wheels/install.js';
import { checkWheelTags } from '../../src/wheels/tags.js';
import { verifyWheel } from '../../src/wheels/verify.js';
import { readWheelInfo } from '../../src/wheels/wheel-info.js';
import { makeWheel, type MakeWheelOptions } from '../helpers/wheels.js';

const OPTIONS = { prefix: '/opt/python', pythonVersion: '3.11', interpreter: '/nix/store/00000000000000000000000000000000-python3-3.11.9/bin/python3.11' };
const TARGET = { pythonVersion: '3.11', implementation: 'cp', platform: 'linux_x86_64' } as const;

/** Temporary directories, removed after the tests. */
const scratch: string[] = [];
afterAll(() => {
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
});

function freshDir(prefix = 'nix2oci-badwheel-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  scratch.push(dir);
  return dir;
}

/** A small wheel whose problem lies late in the layer, after other entries are written. */
function wheelWith(dir: string, extra: Partial<MakeWheelOptions> = {}): string {
  return makeWheel({
    dir,
    name: 'demo',
    version: '1.0',
    files: {
      'demo/__init__.py': 'VALUE = 1\n',
      'demo/data.txt': 'line\n'.repeat(50_000),
      'zzz_last/mod.py': 'print("last")\n',
    },
    ...extra,
  });
}

/** Reads, installs and writes the layer; returns the error and what the layer directory holds afterwards. */
async function installError(wheel: string): Promise<{ error: UserError; left: string[] }> {
  const layerDir = freshDir('nix2oci-layerdir-');
  try {
    const info = await readWheelInfo(wheel);
    await writeLayer(wheelLayerSource(info, OPTIONS).source, { compression: 'gzip', dir: layerDir, mtime: 1 });
  } catch (error) {
    expect(error).toBeInstanceOf(UserError);
    expect((error as Error).message).not.toContain('\n');
    return { error: error as UserError, left: readdirSync(layerDir) };
  }
  throw new Error(`installing ${wheel} succeeded`);
}

/** Where Python's zipfile says an entry's local header starts. */
function headerOffset(wheel: string, name: string): number {
  const script = 'import sys, zipfile\nfor i in zipfile.ZipFile(sys.argv[1]).infolist():\n    if i.filename == sys.argv[2]: print(i.header_offset); break';
  return Number(execFileSync('python3', ['-c', script, wheel, name], { encoding: 'utf8' }).trim());
}

/** Rewrites an entry's uncompressed size in the central directory (a lying zip). */
/** States another size for `name` in the central directory and in its local header (so the two agree). */
function setCentralSize(wheel: string, name: string, size: number): void {
  const bytes = readFileSync(wheel);
  const signature = Buffer.from('PK\x01\x02', 'latin1');
  for (let at = bytes.indexOf(signature); at >= 0; at = bytes.indexOf(signature, at + 4)) {
    const nameLength = bytes.readUInt16LE(at + 28);
    if (bytes.toString('utf8', at + 46, at + 46 + nameLength) === name) {
      bytes.writeUInt32LE(size, at + 24);
      bytes.writeUInt32LE(size, bytes.readUInt32LE(at + 42) + 22);
      writeFileSync(wheel, bytes);
      return;
    }
  }
  throw new Error(`no central directory entry ${name} in ${wheel}`);
}

function recordDigest(bytes: Buffer | string): string {
  return `sha256=${createHash('sha256').update(bytes).digest('base64url')}`;
}

describe('wheel verification refuses broken wheels with one clear line, and leaves no layer', () => {
  it('a file whose bytes do not match its RECORD hash fails the layer mid-write', async () => {
    const dir = freshDir();
    const wheel = wheelWith(dir, { corrupt: { tamper: 'zzz_last/mod.py' } });
    const { error, left } = await installError(wheel);
    const original = 'print("last")\n';
    const tampered = Buffer.from(original);
    tampered[0]! ^= 0xff;
    expect(error.message).toBe(
      `${wheel}: entry zzz_last/mod.py does not match RECORD: RECORD says ${recordDigest(original)}, the entry has ${recordDigest(tampered)}`,
    );
    expect(left).toEqual([]);
    // The pre-pass says the same without writing anything.
    await expect(verifyWheel(await readWheelInfo(wheel))).rejects.toThrow(error.message);
  });

  it('corrupt deflate data is caught while streaming, naming the entry', async () => {
    const dir = freshDir();
    const wheel = wheelWith(dir);
    // Flip bytes in the middle of demo/data.txt's compressed data.
    const bytes = readFileSync(wheel);
    const offset = headerOffset(wheel, 'demo/data.txt') + 30 + 'demo/data.txt'.length + 40;
    for (let i = 0; i < 8; i++) bytes[offset + i]! ^= 0x5a;
    writeFileSync(wheel, bytes);
    const { error, left } = await installError(wheel);
    expect(error.message).toMatch(new RegExp(`^${escape(wheel)}: entry demo/data.txt (\\(data at byte \\d+\\): |does not match RECORD|holds \\d+ bytes)`));
    expect(left).toEqual([]);
  });

  it('an entry going up with ../', async () => {
    const dir = freshDir();
    const wheel = wheelWith(dir, { corrupt: { rawEntries: [{ name: '../evil.py', content: 'x' }] } });
    const { error, left } = await installError(wheel);
    expect(error.message).toBe(`${wheel}: entry "../evil.py" (at byte ${headerOffset(wheel, '../evil.py')}) contains "..": it would escape the install directory`);
    expect(left).toEqual([]);
  });

  it('an absolute entry', async () => {
    const dir = freshDir();
    const wheel = wheelWith(dir, { corrupt: { rawEntries: [{ name: '/etc/profile.d/evil.sh', content: 'x' }] } });
    const { error } = await installError(wheel);
    expect(error.message).toBe(`${wheel}: entry "/etc/profile.d/evil.sh" (at byte ${headerOffset(wheel, '/etc/profile.d/evil.sh')}) is an absolute path`);
  });

  it('a duplicate entry', async () => {
    const dir = freshDir();
    const wheel = wheelWith(dir, { corrupt: { rawEntries: [{ name: 'demo/__init__.py', content: 'import os\n' }] } });
    const { error } = await installError(wheel);
    expect(error.message).toMatch(new RegExp(`^${escape(wheel)}: entry "demo/__init__.py" \\(at byte \\d+\\) appears twice in the zip \\(duplicate entry\\)$`));
  });

  it('WHEEL version 2.0', async () => {
    const dir = freshDir();
    const wheel = wheelWith(dir, { wheelVersion: '2.0' });
    const { error } = await installError(wheel);
    expect(error.message).toBe(`${wheel}: Wheel-Version 2.0 in demo-1.0.dist-info/WHEEL is not supported (only 1.x)`);
  });

  it('a truncated zip', async () => {
    const dir = freshDir();
    const wheel = wheelWith(dir, { corrupt: { truncate: 2000 } });
    const { error } = await installError(wheel);
    expect(error.message).toBe(`${wheel}: not a whole zip file: no end-of-central-directory record (truncated, or not a zip)`);
  });

  it('a damaged central directory', async () => {
    const dir = freshDir();
    const wheel = wheelWith(dir);
    const bytes = readFileSync(wheel);
    const central = bytes.lastIndexOf(Buffer.from('PK\x01\x02', 'latin1'));
    bytes.write('PK\x09\x09', central, 'latin1');
    writeFileSync(wheel, bytes);
    const { error } = await installError(wheel);
    expect(error.message).toBe(`${wheel}: not a whole zip file: bad central directory: invalid central directory file header signature: 0x9094b50`);
  });

  it('a file missing from RECORD, and a RECORD size that disagrees with the zip', async () => {
    const dir = freshDir();
    const unrecorded = wheelWith(dir, { corrupt: { unrecorded: 'demo/data.txt' } });
    expect((await installError(unrecorded)).error.message).toBe(`${unrecorded}: entry demo/data.txt is not listed in demo-1.0.dist-info/RECORD`);
    const dir2 = freshDir();
    const wrongSize = wheelWith(dir2, { corrupt: { recordSize: { path: 'demo/__init__.py', size: 99 } } });
    expect((await installError(wrongSize)).error.message).toBe(
      `${wrongSize}: demo-1.0.dist-info/RECORD: demo/__init__.py should be 99 bytes, the zip holds 10`,
    );
  });

  it('a file that is not a zip at all', async () => {
    const dir = freshDir();
    const wheel = join(dir, 'demo-1.0-py3-none-any.whl');
    writeFileSync(wheel, 'this is not a zip file\n'.repeat(100));
    expect((await installError(wheel)).error.message).toBe(`${wheel}: not a whole zip file: no end-of-central-directory record (truncated, or not a zip)`);
    expect((await installError(join(dir, 'missing-1.0-py3-none-any.whl'))).error.message).toBe(`${join(dir, 'missing-1.0-py3-none-any.whl')}: no such file`);
  });

  it('an entry that inflates past the size the zip directory and RECORD state', async () => {
    const dir = freshDir();
    const wheel = wheelWith(dir, { corrupt: { recordSize: { path: 'demo/data.txt', size: 1000 } } });
    setCentralSize(wheel, 'demo/data.txt', 1000);
    const { error, left } = await installError(wheel);
    expect(error.message).toMatch(new RegExp(`^${escape(wheel)}: entry demo/data.txt \\(data at byte \\d+\\): inflates to more than its 1000 bytes$`));
    expect(left).toEqual([]);
  });

  it('a directory or a device instead of a wheel file', async () => {
    const dir = join(freshDir(), 'demo-1.0-py3-none-any.whl');
    execFileSync('mkdir', [dir]);
    expect((await installError(dir)).error.message).toBe(`${dir}: is a directory, not a wheel`);
  });

  it('a .data directory with an unknown key', async () => {
    const dir = freshDir();
    const wheel = wheelWith(dir, { data: { lib64: { 'x.so': 'x' } } });
    expect((await installError(wheel)).error.message).toBe(
      `${wheel}: entry demo-1.0.data/lib64/x.so: unknown demo-1.0.data directory "lib64" (expected purelib, platlib, headers, scripts or data)`,
    );
  });
});

describe('zip64', () => {
  it('installs a wheel written entirely in zip64 form (zip64 end record, zip64 extra fields) like its plain twin', async () => {
    const files = { 'demo/__init__.py': 'VALUE = 1\n', 'demo/blob.bin': { content: { random: 300_000, seed: 7 }, stored: true } };
    const plain = makeWheel({ dir: freshDir(), name: 'demo', version: '1.0', files });
    const zip64 = makeWheel({ dir: freshDir(), name: 'demo', version: '1.0', files, zip64: true });
    expect(readFileSync(zip64).includes(Buffer.from('PK\x06\x06', 'latin1'))).toBe(true);
    expect(readFileSync(plain).includes(Buffer.from('PK\x06\x06', 'latin1'))).toBe(false);
    const write = async (wheel: string) =>
      writeLayer(wheelLayerSource(await readWheelInfo(wheel), OPTIONS).source, { compression: 'none', dir: freshDir(), mtime: 1 });
    const [a, b] = [await write(plain), await write(zip64)];
    expect(b.diffId).toBe(a.diffId);
  });
});

describe('tags against the image’s Python', () => {
  const check = (file: string) => checkWheelTags({ file, tags: parseTagsOf(file) }, TARGET);

  it('refuses a cp312 wheel for a 3.11 image, naming the closure to export instead', () => {
    expect(() => check('torch-2.9.1-cp312-cp312-linux_x86_64.whl')).toThrow(
      new UserError(
        "torch-2.9.1-cp312-cp312-linux_x86_64.whl: built for CPython 3.12 (tag cp312-cp312-linux_x86_64), the image's Python is 3.11: " +
          "export the closure with Python 3.12 instead (nixpkgs' python312), or use a wheel built for cp311",
      ),
    );
  });

  it('refuses a cp311 wheel for a 3.12 image the other way round, and says the same of every tag of a manylinux wheel', () => {
    const on312 = (file: string) => checkWheelTags({ file, tags: parseTagsOf(file) }, { ...TARGET, pythonVersion: '3.12' });
    expect(() => on312('vllm-0.12.0+rocm711-cp311-cp311-linux_x86_64.whl')).toThrow(
      new UserError(
        "vllm-0.12.0+rocm711-cp311-cp311-linux_x86_64.whl: built for CPython 3.11 (tag cp311-cp311-linux_x86_64), the image's Python is 3.12: " +
          "export the closure with Python 3.11 instead (nixpkgs' python311), or use a wheel built for cp312",
      ),
    );
    expect(() => on312('numpy-2.1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl')).toThrow(
      new UserError(
        "numpy-2.1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl: no tag runs on the image's Python 3.12 on linux/amd64: " +
          "built for CPython 3.11: export the closure with Python 3.11 instead (nixpkgs' python311), or use a wheel built for cp312",
      ),
    );
    // The stable ABI of a later Python: that Python or any after it.
    expect(() => check('demo-1.0-cp312-abi3-linux_x86_64.whl')).toThrow("export the closure with Python 3.12 or later instead (nixpkgs' python312)");
  });

  it('names no closure when no CPython would run the wheel here (platform, Python 2, PyPy, a debug ABI)', () => {
    for (const file of ['demo-1.0-cp312-cp312-win_amd64.whl', 'demo-1.0-py2-none-any.whl', 'demo-1.0-pp310-pypy310_pp73-manylinux2014_x86_64.whl', 'demo-1.0-cp312-cp312d-linux_x86_64.whl']) {
      expect(() => check(file), file).toThrow(UserError);
      expect(() => check(file), file).not.toThrow(/export the closure/);
    }
  });

  it('refuses a macOS wheel for linux/amd64', () => {
    expect(() => check('demo-1.0-cp311-cp311-macosx_11_0_arm64.whl')).toThrow(
      new UserError('demo-1.0-cp311-cp311-macosx_11_0_arm64.whl: platform macosx_11_0_arm64 does not run on linux/amd64'),
    );
  });

  it('refuses the wrong architecture, musl, and a manylinux newer than the image’s glibc', () => {
    expect(() => check('demo-1.0-cp311-cp311-manylinux2014_aarch64.whl')).toThrow('platform manylinux2014_aarch64 does not run on linux/amd64');
    expect(() => check('demo-1.0-cp311-cp311-musllinux_1_2_x86_64.whl')).toThrow('needs musl libc');
    expect(() =>
      checkWheelTags({ file: 'x.whl', tags: parseTagsOf('demo-1.0-cp311-cp311-manylinux_2_39_x86_64.whl') }, { ...TARGET, glibc: '2.38' }),
    ).toThrow('x.whl: platform manylinux_2_39_x86_64 needs glibc 2.39 or later, the image has glibc 2.38');
  });

  it('accepts what pip accepts for CPython 3.11 on x86_64', () => {
    for (const file of [
      'pip-23.0.1-py3-none-any.whl',
      'six-1.16.0-py2.py3-none-any.whl',
      'demo-1.0-cp311-cp311-linux_x86_64.whl',
      'demo-1.0-cp38-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl',
      'demo-1.0-cp311-none-manylinux1_x86_64.whl',
      'demo-1.0-py310-none-any.whl',
      'vllm-0.12.0+rocm711-cp311-cp311-linux_x86_64.whl',
    ]) {
      expect(() => check(file), file).not.toThrow();
    }
    expect(checkWheelTags({ file: 'x.whl', tags: parseTagsOf('demo-1.0-cp311-cp311-manylinux_2_28_x86_64.whl') }, { ...TARGET, glibc: '2.40' })).toEqual({
      python: 'cp311',
      abi: 'cp311',
      platform: 'manylinux_2_28_x86_64',
    });
  });

  it('refuses Python 2, PyPy, a later abi3 and a foreign ABI, listing every tag’s reason when several differ', () => {
    expect(() => check('demo-1.0-py2-none-any.whl')).toThrow("built for Python 2 (tag py2-none-any), the image's Python is 3.11");
    expect(() => check('demo-1.0-pp310-pypy310_pp73-manylinux2014_x86_64.whl')).toThrow('built for PyPy 3.10');
    expect(() => check('demo-1.0-cp312-abi3-linux_x86_64.whl')).toThrow('built for CPython 3.12');
    expect(() => check('demo-1.0-cp311-cp311d-linux_x86_64.whl')).toThrow(
      new UserError("demo-1.0-cp311-cp311d-linux_x86_64.whl: built for ABI cp311d (tag cp311-cp311d-linux_x86_64); the image's Python 3.11 takes cp311, abi3 and none"),
    );
    expect(() => check('demo-1.0-cp312-cp312-win_amd64.whl')).toThrow(
      new UserError("demo-1.0-cp312-cp312-win_amd64.whl: built for CPython 3.12 (tag cp312-cp312-win_amd64), the image's Python is 3.11; platform win_amd64 does not run on linux/amd64"),
    );
    expect(() => check('demo-1.0-cp310.cp312-cp310.cp312-macosx_11_0_arm64.whl')).toThrow(
      new UserError(
        "demo-1.0-cp310.cp312-cp310.cp312-macosx_11_0_arm64.whl: no tag runs on the image's Python 3.11 on linux/amd64: " +
          'built for CPython 3.10; built for CPython 3.12; platform macosx_11_0_arm64 does not run on linux/amd64',
      ),
    );
  });
});

function parseTagsOf(file: string) {
  const [python, abi, platform] = file.replace(/\.whl$/, '').split('-').slice(-3) as [string, string, string];
  return python.split('.').flatMap((p) => abi.split('.').flatMap((a) => platform.split('.').map((pl) => ({ python: p, abi: a, platform: pl }))));
}

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
