import { beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { cliOk, runCli } from '../helpers/cli.js';
import { exportClosure, nixBuild } from '../helpers/nix.js';
import { useScratchDirs } from '../helpers/scratch.js';
import { tools } from '../helpers/tools.js';

/*
 * --max-layer-size on a real closure: a 3.4 MB store path of nested directories, files, a symlink and
 * an empty directory, with a cap of 512 KiB. The path is split across layers at file boundaries; every
 * blob stays under the cap; the unpacked image (umoci) is the same, file by file, as without the cap;
 * the slices have the same digests in another image holding the same path; and what cannot fit is a
 * one-line error.
 */

const CAP = 512 << 10;

/** Every entry under `root`: type, mode, and the content's sha256 or the link's target. */
function tree(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (rel: string) => {
    const path = join(root, rel);
    const stat = lstatSync(path);
    const mode = (stat.mode & 0o7777).toString(8);
    if (stat.isSymbolicLink()) out[rel] = `link ${readlinkSync(path)}`;
    else if (stat.isFile()) out[rel] = `file ${mode} ${createHash('sha256').update(readFileSync(path)).digest('hex')}`;
    else if (stat.isDirectory()) {
      out[rel] = `dir ${mode}`;
      for (const name of readdirSync(path).sort()) walk(rel ? `${rel}/${name}` : name);
    } else out[rel] = `other ${mode}`;
  };
  walk('');
  return out;
}

interface Summary {
  manifestDigest: string;
  layers: { digest: string; size: number; contents: string[] }[];
}

describe.runIf(tools('umoci', 'nix-build', 'nix-store'))('--max-layer-size', () => {
  const scratch = useScratchDirs();
  let dir: string;
  let closure: string;
  let otherClosure: string;
  let bigPath: string;

  beforeAll(() => {
    dir = scratch('nix2oci-e2e-cap-');
    const [app, other] = nixBuild(`
      let
        big = mkDrv "cap-big-1.0" ''
          mkdir -p $out/lib/a/deep $out/lib/b $out/share/empty $out/bin
          for i in 0 1 2 3 4 5 6 7; do
            /usr/bin/awk -v s=$i 'BEGIN { srand(s); for (i = 0; i < 24000; i++) printf "%08x%08x\\n", int(rand() * 4294967295), i }' > $out/lib/a/deep/part$i.so
            /usr/bin/awk -v s=$i 'BEGIN { srand(s + 100); for (i = 0; i < 12000; i++) printf "%08x\\n", int(rand() * 4294967295) }' > $out/lib/b/data$i
          done
          echo small > $out/lib/readme
          printf '#!/bin/sh\\necho hi\\n' > $out/bin/tool
          chmod 0555 $out/bin/tool
          ln -s ../lib/a/deep/part0.so $out/bin/link
        '';
        small = mkDrv "cap-small-1.0" "mkdir -p $out; echo \${big} > $out/uses";
        other = mkDrv "cap-other-1.0" "mkdir -p $out; echo other \${big} > $out/uses";
      in [ small other ]`);
    closure = join(dir, 'app.closure');
    const paths = exportClosure([app!], closure);
    bigPath = paths.find((p) => p.endsWith('-cap-big-1.0'))!;
    otherClosure = join(dir, 'other.closure');
    exportClosure([other!], otherClosure);
  }, 600_000);

  const build = (name: string, args: string[]): Summary =>
    JSON.parse(cliOk(['build-image', '-q', '--json', '--no-cache', '--format', 'oci-layout', '--output', join(dir, name), '--tag', `cap/${name}:test`, ...args]).stdout) as Summary;
  const unpack = (name: string) => {
    const bundle = join(dir, `${name}-bundle`);
    execFileSync('umoci', ['unpack', '--image', `${join(dir, name)}:cap/${name}:test`, bundle], { stdio: 'pipe' });
    return tree(join(bundle, 'rootfs'));
  };

  it('splits a store path larger than the cap into slices, every blob within it, the same files as without the cap', () => {
    const whole = build('whole', ['--closure', closure]);
    const capped = build('capped', ['--closure', closure, '--max-layer-size', String(CAP)]);
    expect(Math.max(...whole.layers.map((l) => l.size))).toBeGreaterThan(CAP);
    for (const layer of capped.layers) expect(layer.size).toBeLessThanOrEqual(CAP);
    const slices = capped.layers.filter((l) => l.contents.length === 1 && l.contents[0] === bigPath);
    expect(slices.length).toBeGreaterThanOrEqual(3);
    expect(capped.layers.length).toBe(whole.layers.length + slices.length - 1);
    const [a, b] = [unpack('whole'), unpack('capped')];
    expect(Object.keys(b).length).toBeGreaterThan(30);
    expect(b).toEqual(a);
    // The whole image's cap-big layer reads the same too: same modes on the directories the slices repeat.
    expect(b[`${bigPath.slice(1)}/lib/a/deep`]).toBe('dir 555');
    expect(b[`${bigPath.slice(1)}/share/empty`]).toBe('dir 555');

    // Another image holding the same path: the same slices, digest for digest.
    const other = build('other', ['--closure', otherClosure, '--max-layer-size', String(CAP)]);
    const otherSlices = other.layers.filter((l) => l.contents.length === 1 && l.contents[0] === bigPath);
    expect(otherSlices.map((l) => l.digest)).toEqual(slices.map((l) => l.digest));

    // The same through the layer cache, cold and warm.
    const cache = join(dir, 'cache');
    for (const round of ['cold', 'warm']) {
      const out = join(dir, `cached-${round}.tar`);
      const summary = JSON.parse(cliOk(['build-image', '-q', '--json', '--cache-dir', cache, '--output', out, '--closure', closure, '--max-layer-size', String(CAP), '--format', 'oci-layout', '--tag', 'cap/capped:test']).stdout) as Summary;
      expect({ round, digest: summary.manifestDigest }).toEqual({ round, digest: capped.manifestDigest });
    }
  });

  it('refuses a cap smaller than one compressed file, naming it and its size, and writes nothing', () => {
    const output = join(dir, 'too-small.tar');
    const result = runCli(['build-image', '-q', '--no-cache', '--closure', closure, '--max-layer-size', '100K', '--output', output]);
    expect(result.code).toBe(1);
    expect(result.stderr.trim().split('\n')).toEqual([
      expect.stringMatching(new RegExp(`^nix2oci: --max-layer-size 100 KiB: ${bigPath}/lib/a/deep/part\\d\\.so is \\d+(\\.\\d)? KiB \\(\\d+(\\.\\d)? KiB compressed\\), larger than the cap`)),
    ]);
    expect(existsSync(output)).toBe(false);
  });

  it('wins over --max-layers: the slices fit the budget exactly, one layer fewer is a one-line error', () => {
    const needed = build('budget', ['--closure', closure, '--max-layer-size', String(CAP)]).layers.length;
    const fits = build('budget-fits', ['--closure', closure, '--max-layer-size', String(CAP), '--max-layers', String(needed)]);
    expect(fits.layers.length).toBe(needed);
    const result = runCli(['build-image', '-q', '--no-cache', '--closure', closure, '--max-layer-size', String(CAP), '--max-layers', String(needed - 1), '--output', join(dir, 'budget.tar')]);
    expect(result.code).toBe(1);
    expect(result.stderr.trim().split('\n')).toEqual([
      expect.stringMatching(new RegExp(`^nix2oci: --max-layer-size 512 KiB needs \\d+ layers for the store paths, more than --max-layers ${needed - 1} leaves for them \\(${needed - 2}\\): raise --max-layers or the cap$`)),
    ]);
  });

  it('rejects a cap of 0 or one that does not parse, in one line', () => {
    for (const [size, shown] of [['0', '"0"'], ['12Q', '"12Q"']] as const) {
      const result = runCli(['build-image', '-q', '--no-cache', '--closure', closure, '--max-layer-size', size, '--output', join(dir, 'bad.tar')]);
      expect(result.code).toBe(1);
      expect(result.stderr.trim()).toBe(`nix2oci: --max-layer-size takes a size such as 500M, 10G or 2048 (bytes), got ${shown}`);
    }
  });
});
