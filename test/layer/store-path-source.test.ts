import { describe, it, expect, beforeAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstatSync, mkdtempSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { loadClosure } from '../../src/nix/closure.js';
import type { Closure } from '../../src/nix/types.js';
import { planLayers } from '../../src/plan/plan.js';
import { storePathsSource } from '../../src/layer/store-paths.js';
import { writeLayer } from '../helpers/layers.js';
import { exportClosure, nixBuild } from '../helpers/nix.js';
import { tools } from '../helpers/tools.js';
import { gnuTarList } from '../tar/tar-tools.js';

/** A file tree as seen by lstat: type, mode, symlink target, content hash — what a layer must reproduce. */
function describeTree(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const visit = (rel: string) => {
    const full = rel === '' ? root : join(root, rel);
    const st = lstatSync(full);
    const mode = (st.mode & 0o7777).toString(8);
    if (st.isSymbolicLink()) out.set(rel, `symlink -> ${readlinkSync(full)}`);
    else if (st.isFile()) out.set(rel, `file ${mode} ${st.size} ${createHash('sha256').update(readFileSync(full)).digest('hex')}`);
    else if (st.isDirectory()) {
      out.set(rel, `dir ${mode}`);
      for (const name of readdirSync(full)) visit(rel === '' ? name : `${rel}/${name}`);
    } else out.set(rel, 'other');
  };
  visit('');
  return out;
}

function untar(blobs: { file: string; compression: string }[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'nix2oci-unpacked-'));
  for (const blob of blobs) execFileSync('tar', ['-x', ...(blob.compression === 'gzip' ? ['-z'] : []), '-f', blob.file, '-C', dir]);
  return dir;
}

describe.runIf(tools('nix-build', 'nix-store', 'tar'))('store path layers from a real Nix export', () => {
  let dep: string;
  let app: string;
  let other: string;
  let fileRoot: string;
  let linkRoot: string;
  let closure: Closure;
  let otherClosure: Closure;
  const work = mkdtempSync(join(tmpdir(), 'nix2oci-sps-'));

  beforeAll(async () => {
    const long = 'n'.repeat(150);
    const deep = Array.from({ length: 8 }, (_, i) => `level-${i}-${'d'.repeat(20)}`).join('/');
    [app, dep, fileRoot, linkRoot, other] = nixBuild(`
      let
        dep = mkDrv "sps-dep-1.0" ''
          mkdir -p $out/data
          seq 1 30000 > $out/data/numbers.txt
          printf 'x' > $out/data/one-byte
        '';
        fileRoot = mkDrv "sps-file-root" "printf 'just a file\\n' > $out";
        linkRoot = mkDrv "sps-link-root" "ln -s \${dep}/data $out";
        app = mkDrv "sps-app-2.0" ''
          mkdir -p $out/bin $out/lib $out/share/${deep} $out/empty-dir
          printf '#!/bin/sh\\necho hello\\n' > $out/bin/hello
          chmod +x $out/bin/hello
          ln -s hello $out/bin/hi
          ln -s \${dep}/data/numbers.txt $out/lib/numbers
          ln -s ../missing/target $out/lib/dangling
          ln -s \${fileRoot} $out/lib/file-root
          ln -s \${linkRoot} $out/lib/link-root
          : > $out/lib/empty
          printf 'caf\\303\\251\\n' > "$out/share/caf\\303\\251-\\346\\226\\207.txt"
          printf 'long\\n' > $out/share/${long}
          printf 'deep\\n' > $out/share/${deep}/file.py
        '';
        other = mkDrv "sps-other-app" "mkdir $out; ln -s \${dep} $out/dep";
      in [ app dep fileRoot linkRoot other ]`);
    exportClosure([app], join(work, 'app.closure'));
    exportClosure([other], join(work, 'other.closure'));
    closure = await loadClosure([join(work, 'app.closure')]);
    otherClosure = await loadClosure([join(work, 'other.closure')]);
  });

  it('puts every store path of the closure back exactly: types, modes, link targets, contents', async () => {
    expect([...closure.paths.keys()].sort()).toEqual([app, dep, fileRoot, linkRoot].sort());
    const plan = planLayers(closure, { maxLayers: 3, reserved: 1 }); // one path alone, three grouped
    expect(plan.map((l) => l.paths.length)).toEqual([1, 3]);
    const blobs = [];
    for (const [i, layer] of plan.entries()) {
      const infos = layer.paths.map((p) => closure.paths.get(p)!);
      blobs.push(await writeLayer(storePathsSource(infos), { compression: i === 0 ? 'gzip' : 'none', dir: work, mtime: 1 }));
    }
    const unpacked = untar(blobs);
    for (const path of closure.paths.keys()) {
      expect(describeTree(join(unpacked, path))).toEqual(describeTree(path));
    }
    // The store path's own modes are the store's: read-only, 0555 for directories and executables.
    expect(describeTree(join(unpacked, app)).get('bin/hello')).toMatch(/^file 555 /);
    expect(describeTree(join(unpacked, app)).get('lib/empty')).toMatch(/^file 444 0 /);
    expect(describeTree(join(unpacked, app)).get('empty-dir')).toBe('dir 555');
    expect(lstatSync(join(unpacked, 'nix/store')).mode & 0o7777).toBe(0o555);
    execFileSync('chmod', ['-R', 'u+w', unpacked]);
  });

  it('lists nix, nix/store, then each path in NAR order, owned by 0:0 at the given mtime', async () => {
    const blob = await writeLayer(storePathsSource([closure.paths.get(app)!, closure.paths.get(dep)!]), {
      compression: 'none',
      dir: work,
      mtime: 1_600_000_000,
    });
    const listed = gnuTarList(blob.file);
    const names = listed.map((e) => e.name);
    expect(names.slice(0, 2)).toEqual(['nix', 'nix/store']);
    // Paths in sorted order, each one's entries depth first with names in byte order (NAR order).
    const rest = names.slice(2);
    const byteOrder = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));
    const expected: string[] = [];
    const walk = (path: string, name: string) => {
      expected.push(name);
      if (lstatSync(path).isDirectory() && !lstatSync(path).isSymbolicLink()) {
        for (const child of readdirSync(path).sort(byteOrder)) walk(join(path, child), `${name}/${child}`);
      }
    };
    for (const path of [app, dep].sort()) walk(path, path.slice(1));
    expect(rest).toEqual(expected);
    expect(new Set(listed.map((e) => `${e.owner} ${e.mtime}`))).toEqual(new Set(['0/0 2020-09-13 12:26:40']));
    const link = listed.find((e) => e.name.endsWith('/lib/numbers'))!;
    expect(link).toMatchObject({ type: 'symlink', mode: 0o777, target: `${dep}/data/numbers.txt` });
  });

  it('gives a store path alone in a layer the same digest in every image, wherever its NAR sat in the export', async () => {
    const depHere = closure.paths.get(dep)!;
    const depThere = otherClosure.paths.get(dep)!;
    expect(depThere.source.file).not.toBe(depHere.source.file);
    for (const compression of ['gzip', 'none'] as const) {
      const a = await writeLayer(storePathsSource([depHere]), { compression, dir: mkdtempSync(join(work, 'a-')), mtime: 1 });
      const b = await writeLayer(storePathsSource([depThere]), { compression, dir: mkdtempSync(join(work, 'b-')), mtime: 1 });
      expect(b.digest).toBe(a.digest);
      expect(b.diffId).toBe(a.diffId);
      expect(readFileSync(b.file).equals(readFileSync(a.file))).toBe(true);
    }
    // And in both plans it is a single-path layer.
    for (const c of [closure, otherClosure]) {
      expect(planLayers(c, { maxLayers: 3, reserved: 1 })[0]!.paths).toEqual([dep]);
    }
  });

  it('reports a NAR that no longer matches its export as a UserError, leaving no blob', async () => {
    const info = closure.paths.get(dep)!;
    const broken = { ...info, source: { file: info.source.file, offset: info.source.offset + 8 } };
    const dir = mkdtempSync(join(work, 'broken-'));
    await expect(writeLayer(storePathsSource([broken]), { compression: 'gzip', dir, mtime: 1 })).rejects.toThrow(
      new RegExp(`^${join(work, 'app.closure').replace(/[.]/g, '\\.')}: byte \\d+: ${dep}`),
    );
    expect(readdirSync(dir)).toEqual([]);
  });

  it('compresses to a blob whose gunzipped bytes are the uncompressed layer', async () => {
    const infos = [...closure.paths.values()];
    const none = await writeLayer(storePathsSource(infos), { compression: 'none', dir: mkdtempSync(join(work, 'n-')), mtime: 1 });
    const gzip = await writeLayer(storePathsSource(infos), { compression: 'gzip', dir: mkdtempSync(join(work, 'g-')), mtime: 1 });
    expect(gzip.diffId).toBe(none.diffId);
    expect(gunzipSync(readFileSync(gzip.file)).equals(readFileSync(none.file))).toBe(true);
  });
});
