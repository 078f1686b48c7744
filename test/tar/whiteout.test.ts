import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { TarWriter, type ChunkSink } from '../../src/tar/writer.js';
import { parseRecipe } from '../../src/recipe/load.js';
import { ZipReader } from '../../src/wheels/zip.js';
import { readWheelInfo } from '../../src/wheels/wheel-info.js';
import { wheelLayerSource } from '../../src/wheels/install.js';
import { UserError } from '../../src/util/errors.js';
import { runCli } from '../helpers/cli.js';
import { exportClosure, nixBuild } from '../helpers/nix.js';
import { useScratchDirs } from '../helpers/scratch.js';
import { tools } from '../helpers/tools.js';
import { makeWheel } from '../helpers/wheels.js';

/**
 * A layer entry named `.wh.<name>` is a whiteout: runtimes delete `<name>` from the layers below instead
 * of creating a file, and `.wh..wh..opq` empties a directory. Such names are refused wherever they come
 * from, with the store path (or wheel, or recipe key) named.
 */

const scratch = useScratchDirs();

async function errorOf(promise: Promise<unknown> | (() => unknown)): Promise<Error> {
  try {
    await (typeof promise === 'function' ? promise() : promise);
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected an error');
}

const discard: ChunkSink = { acquire: () => Buffer.alloc(64 << 10), submit: () => {} };

describe('whiteout names', () => {
  it('the tar writer refuses them in any component, naming the store path', async () => {
    const store = '/nix/store/0123456789abcdfghijklmnpqrsvwxyz0-evil';
    for (const [name, component] of [
      [`${store.slice(1)}/.wh.passwd`, '.wh.passwd'],
      [`${store.slice(1)}/etc/.wh..wh..opq`, '.wh..wh..opq'],
      [`${store.slice(1)}/.wh.dir/file`, '.wh.dir'],
    ] as const) {
      const tar = new TarWriter(discard, { mtime: 1 });
      const err = await errorOf(tar.add({ type: 'file', name, mode: 0o444, size: 0, body: Buffer.alloc(0) }));
      expect(err).toBeInstanceOf(UserError);
      expect(err.message).toMatch(new RegExp(`^store path ${store}: entry '.*': '${component.replace(/\./g, '\\.')}' starts with \\.wh\\., which marks a whiteout in a layer`));
    }
    const tar = new TarWriter(discard, { mtime: 1 });
    const err = await errorOf(tar.add({ type: 'directory', name: 'opt/.wh.x', mode: 0o755 }));
    expect(err.message).toBe(`layer entry 'opt/.wh.x': '.wh.x' starts with .wh., which marks a whiteout in a layer: a runtime unpacking it would delete "x" instead of creating a file`);
    // Names that merely contain it are fine.
    await new TarWriter(discard, { mtime: 1 }).add({ type: 'directory', name: 'opt/x.wh.y', mode: 0o755 });
  });

  it('the recipe refuses them in directories, homes and the Python prefix', () => {
    const message = (recipe: unknown) => {
      try {
        parseRecipe(recipe, 'r.json');
      } catch (error) {
        return (error as Error).message;
      }
      return 'accepted';
    };
    expect(message({ directories: [{ path: '/data/.wh..wh..opq' }] })).toBe(
      'r.json: /directories/0/path: ".wh..wh..opq" starts with .wh., which marks a whiteout in a layer: a runtime unpacking it would empty its directory',
    );
    expect(message({ users: [{ name: 'a', uid: 1, gid: 1, home: '/srv/.wh.a' }] })).toMatch(/^r\.json: \/users\/0\/home: "\.wh\.a" starts with \.wh\./);
    expect(message({ python: { prefix: '/opt/.wh.python' } })).toMatch(/^r\.json: \/python\/prefix: "\.wh\.python" starts with \.wh\./);
  });

  it.runIf(tools('python3'))('a wheel may not hold one, nor name an entry point after one', async () => {
    const dir = scratch('nix2oci-whiteout-wheel-');
    const entry = makeWheel({ dir, name: 'evil', version: '1.0', files: { 'evil/__init__.py': '', 'evil/.wh.__init__.py': '' } });
    const err = await errorOf(ZipReader.open(entry));
    expect(err).toBeInstanceOf(UserError);
    expect(err.message).toMatch(/evil-1\.0-py3-none-any\.whl: entry "evil\/\.wh\.__init__\.py" \(at byte \d+\) has a component "\.wh\.__init__\.py" that starts with \.wh\./);

    const scriptDir = scratch('nix2oci-whiteout-script-');
    const script = makeWheel({ dir: scriptDir, name: 'evil', version: '1.0', files: { 'evil/__init__.py': 'def main(): pass\n' }, entryPoints: { console_scripts: { '.wh.python3': 'evil:main' } } });
    const info = { ...(await readWheelInfo(script)), file: script };
    const planned = await errorOf(() => wheelLayerSource(info, { prefix: '/opt/python', pythonVersion: '3.11', interpreter: '/nix/store/x-python3/bin/python3' }));
    expect(planned).toBeInstanceOf(UserError);
    expect(planned.message).toBe(
      `${script}: entry point .wh.python3 would install /opt/python/bin/.wh.python3, whose ".wh.python3" starts with .wh., which marks a whiteout in a layer: a runtime unpacking it would delete "python3" instead of creating a file`,
    );
  });
});

describe.runIf(tools('nix-build', 'nix-store'))('a store path holding whiteout names', () => {
  let dir: string;
  let closure: string;
  let path: string;

  beforeAll(() => {
    dir = scratch('nix2oci-whiteout-nix-');
    [path] = nixBuild(`mkDrv "whiteouts" "mkdir -p $out/etc; echo x > $out/etc/.wh..wh..opq; echo y > $out/.wh.bin; echo z > $out/ok"`) as [string];
    closure = join(dir, 'w.closure');
    exportClosure([path], closure);
  }, 120_000);

  it('is refused while the export is read: file, byte offset, store path and entry, exit 1, no output', () => {
    const out = join(dir, 'w.tar');
    const result = runCli(['build-image', '-q', '--closure', closure, '--no-cache', '--output', out]);
    expect(result.code).toBe(1);
    const lines = result.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    // NAR order: `.wh.bin` sorts before `etc`, so it is the first problem found.
    const offset = readFileSync(closure).indexOf(Buffer.from('.wh.bin'));
    expect(lines[0]).toBe(
      `nix2oci: ${closure}: byte ${offset - 8}: ${path}: entry '.wh.bin': name '.wh.bin' starts with .wh., which marks a whiteout in a layer: a runtime unpacking it would delete "bin" instead of creating a file`,
    );
    expect(existsSync(out)).toBe(false);
  });
});
