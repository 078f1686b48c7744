import { describe, it, expect } from 'vitest';
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, realpathSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { writeLayer } from '../helpers/layers.js';
import { ElfCollector, type ElfObject } from '../../src/wheels/checks/elf-collector.js';
import { wheelLayerSource, type WheelInstallOptions, type WheelLayerPiece } from '../../src/wheels/install.js';
import { readWheelInfo } from '../../src/wheels/wheel-info.js';
import { UnzipPool } from '../../src/wheels/unzip-pool.js';
import { isUserError } from '../../src/util/errors.js';
import { makeWheel } from '../helpers/wheels.js';
import { useScratchDirs } from '../helpers/scratch.js';
import { mountTmpfs, tmpfsAvailable } from '../helpers/tmpfs.js';

/**
 * An uncompressed wheel layer written whole by an unzip thread (WheelLayerPiece.writeTar) must be the
 * very layer the tar writer makes of the same piece, and give the library check the same facts.
 */

const scratchDir = useScratchDirs();
const freshDir = (prefix = 'nix2oci-write-tar-') => scratchDir(prefix);

const WHEELS = readdirSync('/usr/share/python-wheels')
  .filter((f) => /^(pip|setuptools)-.*\.whl$/.test(f))
  .map((f) => join('/usr/share/python-wheels', f));
const PYTHON = execFileSync('python3', ['-c', 'import sys; print(sys.executable)'], { encoding: 'utf8' }).trim();
const OPTIONS: WheelInstallOptions = { prefix: '/opt/python', pythonVersion: '3.11', interpreter: PYTHON };
const LIBZ = readFileSync(realpathSync('/usr/lib/x86_64-linux-gnu/libz.so.1'));
const LIBSTDCXX = readFileSync(realpathSync('/usr/lib/x86_64-linux-gnu/libstdc++.so.6'));

/** A wheel with every kind of body: small and large, deflated and stored, ELF libraries, launchers, headers. */
function mixedWheel(dir: string, corrupt?: { tamper: string }): string {
  const small = Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`mixed/mod${String(i).padStart(3, '0')}.py`, `X = ${i}\n`.repeat(i % 40)]));
  return makeWheel({
    dir,
    name: 'mixed',
    version: '1.0',
    tag: 'cp311-cp311-linux_x86_64',
    files: {
      ...small,
      'mixed/libz.so.1': { content: LIBZ, mode: 0o755 },
      'mixed/libstdc++.so.6': { content: LIBSTDCXX },
      'mixed/big.bin': { content: { random: 3 << 20, seed: 7 } },
      'mixed/stored.bin': { content: { random: (2 << 20) + 123, seed: 8 }, stored: true },
      'mixed/tiny-stored.txt': { content: 'stored\n', stored: true },
      'mixed/empty.txt': '',
    },
    data: { headers: { 'mixed.h': '#define MIXED 1\n' } },
    entryPoints: { console_scripts: { mixed: 'mixed:main' } },
    ...(corrupt && { corrupt }),
  });
}

/** Writes a piece both ways; `at` puts the worker's layer in the middle of a file, as in an archive. */
async function bothWays(piece: Pick<WheelLayerPiece, 'source' | 'writeTar'>) {
  const mtime = 1_700_000_000;
  const dir = freshDir();
  const reference = await writeLayer(piece.source, { compression: 'none', dir, mtime });
  const file = join(dir, 'archive');
  const at = 1234;
  writeFileSync(file, Buffer.alloc(at, 0xaa));
  const handle = await open(file, 'r+');
  let written;
  try {
    written = await piece.writeTar({ handle, at, path: file }, mtime);
  } finally {
    await handle.close();
  }
  return { reference, written, bytes: readFileSync(file), at };
}

describe('an uncompressed wheel layer written by an unzip thread', () => {
  it('is byte for byte the tar writer’s layer, for every piece of real and mixed wheels', async () => {
    const wheels = [...WHEELS, mixedWheel(freshDir())];
    expect(wheels.length).toBe(3);
    for (const wheel of wheels) {
      const info = await readWheelInfo(wheel);
      // A low threshold splits files off: split pieces of stored, deflated and ELF files.
      const layer = wheelLayerSource(info, { ...OPTIONS, splitThreshold: 1 << 20, unzip: new UnzipPool(2) });
      // Each piece, and the whole install as one layer.
      for (const piece of [...layer.pieces, { id: 'whole', source: layer.source, writeTar: layer.writeTar }]) {
        const { reference, written, bytes, at } = await bothWays(piece);
        expect(written, `${wheel} ${piece.id}`).not.toBeNull();
        const w = written!;
        expect(w.size).toBe(reference.size);
        expect(w.digest).toBe(reference.digest);
        expect(w.diffId).toBe(reference.diffId);
        expect(bytes.subarray(at).equals(readFileSync(reference.file))).toBe(true);
        // What lay before is untouched.
        expect(bytes.subarray(0, at).every((b) => b === 0xaa)).toBe(true);
      }
    }
  });

  it('gives the library check the same ELF facts as the streaming install', async () => {
    const info = await readWheelInfo(mixedWheel(freshDir()));
    const facts = async (way: 'stream' | 'worker'): Promise<ElfObject[]> => {
      const collector = new ElfCollector();
      const layer = wheelLayerSource(info, { ...OPTIONS, splitThreshold: 1 << 20, inspect: ({ path, entry }) => collector.entry(info.file, entry.name, path) });
      for (const piece of layer.pieces) {
        if (way === 'stream') await writeLayer(piece.source, { compression: 'none', dir: freshDir(), mtime: 1 });
        else {
          const file = join(freshDir(), 'layer');
          const handle = await open(file, 'w+');
          await piece.writeTar({ handle, at: 0, path: file }, 1);
          await handle.close();
        }
      }
      return collector.finish();
    };
    const streamed = await facts('stream');
    expect(streamed.map((o) => o.facts.soname).sort()).toEqual(['libstdc++.so.6', 'libz.so.1']);
    expect(await facts('worker')).toEqual(streamed);
  });

  it('tells how far it is in bytes of the wheel’s files, as a progress display counts them', async () => {
    const info = await readWheelInfo(mixedWheel(freshDir()));
    const layer = wheelLayerSource(info, OPTIONS);
    const file = join(freshDir(), 'layer');
    const handle = await open(file, 'w+');
    let told = 0;
    try {
      await layer.writeTar({ handle, at: 0, path: file }, 1, (bytes) => (told += bytes));
    } finally {
      await handle.close();
    }
    // Every file the wheel installs as it is (its RECORD is replaced by the installed one).
    const installed = info.entries.filter((e) => !e.isDir && !e.name.endsWith('.dist-info/RECORD')).reduce((n, e) => n + e.size, 0);
    expect(told).toBe(installed);
  });

  it('is not made for a layer holding a #!python script (its size is known only as it streams)', async () => {
    const wheel = makeWheel({ dir: freshDir(), name: 'scripted', version: '1', files: { 'scripted/__init__.py': '' }, dataScripts: { run: '#!python\nimport scripted\n' } });
    const layer = wheelLayerSource(await readWheelInfo(wheel), OPTIONS);
    const handle = await open(join(freshDir(), 'x'), 'w+');
    try {
      expect(layer.pieces[0]!.writeTar({ handle, at: 0, path: 'x' }, 1)).toBeNull();
    } finally {
      await handle.close();
    }
  });

  it('fails on an entry RECORD does not list, with the one line the streaming install gives', async () => {
    for (const tamper of ['mixed/big.bin', 'mixed/mod007.py']) {
      const wheel = mixedWheel(freshDir(), { tamper });
      const info = await readWheelInfo(wheel);
      const layer = wheelLayerSource(info, OPTIONS);
      const streamed = (await writeLayer(layer.source, { compression: 'none', dir: freshDir(), mtime: 1 }).then(
        () => new Error('no error'),
        (err: unknown) => err,
      )) as Error;
      const file = join(freshDir(), 'layer');
      const handle = await open(file, 'w+');
      const worker = (await layer.pieces[0]!.writeTar({ handle, at: 0, path: file }, 1)!.then(
        () => new Error('no error'),
        (err: unknown) => err,
      )) as Error;
      await handle.close();
      expect(isUserError(worker), String(worker)).toBe(true);
      expect(worker.message).toMatch(new RegExp(`entry ${tamper.replace('.', '\\.')} does not match RECORD`));
      expect(worker.message).toBe(streamed.message);
    }
  });

  it.runIf(tmpfsAvailable())('fails on a full disk with the one line a write error gives, naming the output', async () => {
    const disk = mountTmpfs('512k');
    try {
      const info = await readWheelInfo(mixedWheel(freshDir()));
      const layer = wheelLayerSource(info, OPTIONS);
      const file = join(disk.dir, 'layer');
      const handle = await open(file, 'w+');
      const error = await layer.writeTar({ handle, at: 0, path: file }, 1)!.then(
        () => new Error('no error'),
        (err: unknown) => err as Error,
      );
      await handle.close();
      expect(isUserError(error), String(error)).toBe(true);
      expect(error.message).toBe(`cannot write ${file}: no space left on the device (ENOSPC)`);
    } finally {
      disk.unmount();
    }
  });

  it('stops when told to, and the thread goes on with the next layer', async () => {
    const info = await readWheelInfo(mixedWheel(freshDir()));
    const pool = new UnzipPool(1);
    const layer = wheelLayerSource(info, { ...OPTIONS, unzip: pool });
    const file = join(freshDir(), 'layer');
    const handle = await open(file, 'w+');
    try {
      const stop = new AbortController();
      const entries = info.entries.filter((e) => !e.isDir && e.size > 0);
      expect(entries.length).toBeGreaterThan(100);
      // The pool's own call, stopped at once: it rejects, and writes nothing after it says so.
      const { ZipReader } = await import('../../src/wheels/zip.js');
      const zip = await ZipReader.open(info.file);
      const byName = new Map(zip.entries.map((e) => [e.name, e]));
      await zip.close();
      const once = entries.map((e) => ({ name: e.name, offset: byName.get(e.name)!.offset, central: byName.get(e.name)!.central, hash: e.recordHash }));
      // The wheel's files over and over: more than the 16 MiB a thread writes before it reads its messages again.
      const requests = Array.from({ length: 20 }, () => once).flat();
      expect(requests.reduce((n, r) => n + r.central.uncompressedSize, 0)).toBeGreaterThan(32 << 20);
      const frame = Buffer.alloc(512);
      const running = pool.writeLayer(info.file, { fd: handle.fd, at: 0 }, frame, requests.map(() => 0), requests, { stop: stop.signal });
      stop.abort();
      await expect(running).rejects.toThrow('cancelled');
      const written = await layer.pieces[0]!.writeTar({ handle, at: 0, path: file }, 1);
      expect(written!.size).toBe(layer.pieces[0]!.tarSize(1));
    } finally {
      await handle.close();
    }
  });
});
