import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CACHE_FORMAT_VERSION } from '../../src/layer/format.js';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cliOk, runCli } from '../helpers/cli.js';
import { buildPythonClosure, canBuildPythonClosure, exportPythonClosure } from '../helpers/python-closure.js';
import { makeZlibExtensionWheel, ZLIB_EXTENSION_ENTRY } from '../helpers/vllm-wheels.js';
import { makeWheel } from '../helpers/wheels.js';
import { tools } from '../helpers/tools.js';
import { startRegistry, type RunningRegistry } from '../helpers/registry.js';

/**
 * Wheel layers through the cache, on the real Python closure: a hit skips the pass that feeds the
 * library check, so the check must see the same facts from the cache (the image's LD_LIBRARY_PATH
 * comes from it, and so does a missing library's error).
 */

interface Summary {
  manifestDigest: string;
  problems: { severity: string; entry?: string; library?: string }[];
  layers: { digest: string; contents: string[]; reused: boolean; from?: string }[];
}

const ready = canBuildPythonClosure() && tools('nix-build', 'nix-store', 'gcc', 'python3');

describe.runIf(ready)('wheel layers from the cache', () => {
  let dir: string;
  let withZlib: string;
  let withoutZlib: string;
  let zlibext: string;
  let pkg1: string;
  let pkg2: string;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'nix2oci-wheel-cache-'));
    withZlib = exportPythonClosure(buildPythonClosure({ zlib: true }), join(dir, 'with-zlib')).closureFile;
    withoutZlib = exportPythonClosure(buildPythonClosure(), join(dir, 'without-zlib')).closureFile;
    zlibext = makeZlibExtensionWheel(dir);
    pkg1 = makeWheel({ dir, name: 'cachedemo', version: '1.0', files: { 'cachedemo/__init__.py': 'VERSION = 1\n' } });
    pkg2 = makeWheel({ dir, name: 'cachedemo', version: '2.0', files: { 'cachedemo/__init__.py': 'VERSION = 2\n' } });
  });
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const build = (closure: string, cache: string, wheels: string[]) =>
    JSON.parse(
      cliOk(['build-image', '-q', '--json', '--closure', closure, '--cache-dir', cache, ...wheels.flatMap((w) => ['--wheel', w]), '--output', join(dir, `out-${Math.random()}.tar`)]).stdout,
    ) as Summary;
  const wheelLayers = (s: Summary) => Object.fromEntries(s.layers.filter((l) => l.contents[0]!.endsWith('.whl')).map((l) => [l.contents[0]!, l.reused]));

  it('a rebuild with one changed wheel rebuilds only that wheel’s layer, and the image is a cold build’s', () => {
    const cache = join(dir, 'cache-a');
    const cold = build(withZlib, cache, [zlibext, pkg1]);
    expect(Object.values(wheelLayers(cold))).toEqual([false, false]);
    const warm = build(withZlib, cache, [zlibext, pkg1]);
    expect(wheelLayers(warm)).toEqual({ 'zlibext-1.0-cp311-cp311-linux_x86_64.whl': true, 'cachedemo-1.0-py3-none-any.whl': true });
    // Same manifest: same config too, whose LD_LIBRARY_PATH the library check derived from cached ELF facts.
    expect(warm.manifestDigest).toBe(cold.manifestDigest);
    expect(warm.layers.filter((l) => !l.contents[0]!.endsWith('.whl') && l.contents[0] !== 'image-root').every((l) => l.reused)).toBe(true);

    const changed = build(withZlib, cache, [zlibext, pkg2]);
    expect(wheelLayers(changed)).toEqual({ 'zlibext-1.0-cp311-cp311-linux_x86_64.whl': true, 'cachedemo-2.0-py3-none-any.whl': false });
    expect(changed.manifestDigest).toBe(build(withZlib, join(dir, 'cache-b'), [zlibext, pkg2]).manifestDigest);
  });

  it('a damaged wheel blob is detected and the layer rebuilt', () => {
    const cache = join(dir, 'cache-d');
    const cold = build(withZlib, cache, [pkg1]);
    const entries = readdirSync(join(cache, `v${CACHE_FORMAT_VERSION}/wheels`));
    expect(entries).toHaveLength(1);
    const { digest } = JSON.parse(readFileSync(join(cache, `v${CACHE_FORMAT_VERSION}/wheels`, entries[0]!), 'utf8')).value;
    const blob = join(cache, `v${CACHE_FORMAT_VERSION}/blobs`, digest.slice(7));
    const bytes = readFileSync(blob);
    bytes[bytes.length - 20] ^= 1;
    writeFileSync(blob, bytes);
    const healed = build(withZlib, cache, [pkg1]);
    expect(wheelLayers(healed)).toEqual({ 'cachedemo-1.0-py3-none-any.whl': false });
    expect(healed.manifestDigest).toBe(cold.manifestDigest);
    expect(wheelLayers(build(withZlib, cache, [pkg1]))).toEqual({ 'cachedemo-1.0-py3-none-any.whl': true });
  });

  it('an entry whose diffID lies (checksum made to match) is caught with a warning, and the image is right', () => {
    const cache = join(dir, 'cache-lie');
    const cold = build(withZlib, cache, [pkg1]);
    const wheels = join(cache, `v${CACHE_FORMAT_VERSION}/wheels`);
    const [name] = readdirSync(wheels);
    const { value } = JSON.parse(readFileSync(join(wheels, name!), 'utf8'));
    const lie = { ...value, diffId: `sha256:${'3'.repeat(64)}` };
    const sum = createHash('sha256').update(JSON.stringify(lie)).digest('hex');
    writeFileSync(join(wheels, name!), `${JSON.stringify({ sum, value: lie })}\n`);
    const args = ['build-image', '--json', '--closure', withZlib, '--cache-dir', cache, '--wheel', pkg1, '--output', join(dir, 'lie.tar')];
    const run = runCli(args);
    expect(run.code).toBe(0);
    expect(run.stderr).toMatch(new RegExp(`wheels/${name}.*diffID sha256:3{64}.*its tar is \\d+ bytes with diffID ${value.diffId}; the layer was made again`));
    expect((JSON.parse(run.stdout) as Summary).manifestDigest).toBe(cold.manifestDigest);
    const again = runCli(args);
    expect(again.stderr).not.toMatch(/diffID/);
    expect(wheelLayers(JSON.parse(again.stdout) as Summary)).toEqual({ 'cachedemo-1.0-py3-none-any.whl': true });
  });

  it('an unchanged wheel is not read again, but one changed in place (same size and mtime) is', () => {
    const cache = join(dir, 'cache-e');
    // Stored, not deflated, so the module's text can be found and changed in the file.
    mkdirSync(join(dir, 'changing'));
    const wheel = makeWheel({ dir: join(dir, 'changing'), name: 'cachedemo', version: '1.0', files: { 'cachedemo/__init__.py': 'VERSION = 1\n' }, compression: 'stored' });
    const cold = build(withZlib, cache, [wheel]);
    const warm = build(withZlib, cache, [wheel]);
    expect(warm.manifestDigest).toBe(cold.manifestDigest);
    // The closure file and the wheel were each read once, and remembered.
    expect(JSON.parse(cliOk(['cache', 'stats', '--json', '--cache-dir', cache]).stdout).entries.inputs).toBe(2);
    // The module's text changed in place, as a corrupted download would be: RECORD's hash no longer
    // matches. A wheel taken for unchanged would be a cache hit; read again, it fails its check.
    const { mtime, atime } = statSync(wheel);
    const bytes = readFileSync(wheel);
    const at = bytes.indexOf('VERSION = 1');
    expect(at).toBeGreaterThan(0);
    bytes[at + 'VERSION = '.length] = '7'.charCodeAt(0);
    writeFileSync(wheel, bytes);
    utimesSync(wheel, atime, mtime);
    const changed = runCli(['build-image', '-q', '--closure', withZlib, '--cache-dir', cache, '--wheel', wheel, '--output', join(dir, 'changed.tar')]);
    expect(changed.code).toBe(1);
    expect(changed.stderr).toMatch(/cachedemo\/__init__\.py.*(sha256|hash)/);
  });

  it('the library check fails the same way from a cached wheel layer as from a fresh one', () => {
    const cache = join(dir, 'cache-c');
    const args = ['build-image', '-q', '--json', '--closure', withoutZlib, '--cache-dir', cache, '--wheel', zlibext, '--output', join(dir, 'fails.tar')];
    const cold = runCli(args);
    const stats = JSON.parse(cliOk(['cache', 'stats', '--json', '--cache-dir', cache]).stdout);
    expect(stats.entries.wheels).toBe(1);
    const warm = runCli(args);
    expect(cold.code).toBe(1);
    expect(cold.stderr).toContain('libz.so.1: needed by 1 file in 1 wheel (zlibext) — add zlib to the closure (zlib)');
    const { problems } = JSON.parse(cold.stdout) as { problems: { severity: string; entry?: string; library?: string }[] };
    expect(problems.filter((p) => p.severity === 'error')).toMatchObject([{ entry: ZLIB_EXTENSION_ENTRY, library: 'libz.so.1' }]);
    expect(warm).toEqual(cold);
  });

  describe.runIf(tools('docker-registry'))('from the registry cache, on a fresh runner', () => {
    let registry: RunningRegistry;
    beforeAll(async () => {
      registry = await startRegistry();
    });
    afterAll(async () => {
      await registry?.stop();
    });

    it('takes wheel layers with their library facts from the index: the same image, and the library check fails the same way', () => {
      const push = (closure: string, tag: string, cache: string) =>
        runCli(['build-image', '--json', '--closure', closure, '--cache-dir', join(dir, cache), '--wheel', zlibext, '--wheel', pkg1, '--push', `${registry.host}/wheels:${tag}`, '--tls-verify=false']);
      const summaryOf = (stdout: string) => JSON.parse(stdout.slice(0, stdout.lastIndexOf('}') + 1)) as Summary;
      const cold = push(withZlib, 'cold', 'registry-cold');
      expect(cold.code, cold.stderr).toBe(0);
      const fresh = push(withZlib, 'fresh', 'registry-fresh');
      expect(fresh.code, fresh.stderr).toBe(0);
      const [a, b] = [summaryOf(cold.stdout), summaryOf(fresh.stdout)];
      // The config's LD_LIBRARY_PATH comes from the wheels' facts: the same manifest means the index's facts served.
      expect(b.manifestDigest).toBe(a.manifestDigest);
      expect(b.layers.map((l) => l.from)).toEqual(b.layers.map(() => 'registry'));

      const lacking = push(withoutZlib, 'lacking', 'registry-lacking');
      expect(lacking.code).toBe(1);
      // Its layer came from the registry, so the check ran on the index's facts.
      expect(lacking.stderr).toMatch(/registry [0-9a-f]{12} .*zlibext-1\.0/);
      expect(lacking.stderr).toContain('libz.so.1: needed by 1 file in 1 wheel (zlibext) — add zlib to the closure (zlib)');
      expect(summaryOf(lacking.stdout).problems.filter((p) => p.severity === 'error')).toMatchObject([{ entry: ZLIB_EXTENSION_ENTRY, library: 'libz.so.1' }]);
    });
  });
});
