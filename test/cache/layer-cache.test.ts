import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { loadClosure } from '../../src/nix/closure.js';
import type { Closure } from '../../src/nix/types.js';
import { storePathsSource } from '../../src/layer/store-paths.js';
import { writeLayer } from '../helpers/layers.js';
import { CacheStore, defaultCacheDir } from '../../src/cache/store.js';
import { LayerCache } from '../../src/cache/layer-cache.js';
import { storePathsEnds, writeStorePathsLayer } from '../../src/layer/store-paths.js';
import { open } from 'node:fs/promises';
import { defaultHashPool } from '../../src/util/hash-pool.js';
import { cacheStats, GRACE_MS, pruneCache } from '../../src/cache/maintenance.js';
import { sizeFlag } from '../../src/cli/flags.js';
const parseSize = (text: string) => sizeFlag(text, '--max-size');
import { CACHE_FORMAT_VERSION, type LayerFormat } from '../../src/layer/format.js';
import { blobBytes, blobToFile } from '../helpers/blobs.js';
import { REPO } from '../helpers/cli.js';
import { tools } from '../helpers/tools.js';

const CLOSURE = join(REPO, 'layers/demo/demo.closure');
const GZIP: LayerFormat = { compression: 'gzip', gzipLevel: 6, mtime: 1 };

let dir: string;
let closure: Closure;
let n = 0;
const fresh = (name: string) => {
  const path = join(dir, `${name}-${++n}`);
  mkdirSync(path);
  return path;
};

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'nix2oci-layer-cache-'));
  closure = await loadClosure([CLOSURE], { tmpDir: dir });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function cacheIn(cacheDir: string, settings: LayerFormat = GZIP): Promise<LayerCache> {
  return new LayerCache(await CacheStore.open(cacheDir), settings, fresh('work'), { hashes: defaultHashPool() });
}

describe('a layer composed of cached parts', () => {
  it('holds exactly the tar the layer writer makes for the same paths, as a multi-member gzip', async () => {
    const infos = [...closure.paths.values()];
    const composed = await (await cacheIn(fresh('cache'))).storePathLayer(infos);
    const direct = await writeLayer(storePathsSource(infos), { compression: 'none', dir: fresh('direct'), mtime: 1 });
    expect(composed.layer.diffId).toBe(direct.diffId);
    expect(composed.layer.uncompressedSize).toBe(direct.uncompressedSize);
    // Node, like gzip(1), reads every member of a multi-member stream.
    expect(gunzipSync(blobBytes(composed.layer)).equals(readFileSync(direct.file))).toBe(true);
    // head + one member per path + end
    const members = blobBytes(composed.layer).toString('latin1').split('\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03').length - 1;
    expect(members).toBeGreaterThanOrEqual(infos.length + 2);
  });

  it.runIf(tools('gzip', 'tar'))('is read whole by gzip and GNU tar', async () => {
    const infos = [...closure.paths.values()];
    const composed = await (await cacheIn(fresh('cache'))).storePathLayer(infos);
    const file = blobToFile(composed.layer, join(fresh('blob'), 'layer.tar.gz'));
    execFileSync('gzip', ['-t', file]);
    const listed = execFileSync('tar', ['-tzf', file], { encoding: 'utf8' }).split('\n').filter(Boolean);
    expect(listed.slice(0, 2)).toEqual(['nix/', 'nix/store/']);
    for (const path of closure.paths.keys()) expect(listed).toContain(`${path.slice(1)}/`);
  });

  it('is the same blob cold, warm, and from parts cached by another grouping', async () => {
    const [first, second, third] = [...closure.paths.values()];
    const cold = await (await cacheIn(fresh('cache'))).storePathLayer([first!]);
    const cacheDir = fresh('cache');
    const grouped = await cacheIn(cacheDir);
    const together = await grouped.storePathLayer([first!, second!, third!]);
    expect(together.reused).toBe(false);
    const fromParts = await (await cacheIn(cacheDir)).storePathLayer([first!]);
    expect(fromParts.reused).toBe(true);
    const warm = await (await cacheIn(cacheDir)).storePathLayer([first!]);
    expect(warm.reused).toBe(true);
    expect([fromParts.layer.descriptor.digest, warm.layer.descriptor.digest]).toEqual([cold.layer.descriptor.digest, cold.layer.descriptor.digest]);
    expect(blobBytes(warm.layer).equals(blobBytes(cold.layer))).toBe(true);
    // Every part's blob file is a layer of that path alone: the path's bytes are kept once.
    const entries = readdirSync(join(cacheDir, `v${CACHE_FORMAT_VERSION}/parts`)).map((name) => JSON.parse(readFileSync(join(cacheDir, `v${CACHE_FORMAT_VERSION}/parts`, name), 'utf8')).value);
    const own = entries.find((e) => e.storePath === first!.path);
    expect(own.blob).toBe(cold.layer.descriptor.digest);
    expect(readdirSync(join(cacheDir, `v${CACHE_FORMAT_VERSION}/blobs`))).toHaveLength(3);
  });

  it('uncompressed layers compose the same way', async () => {
    const infos = [...closure.paths.values()];
    const settings: LayerFormat = { compression: 'none', gzipLevel: 6, mtime: 1 };
    const composed = await (await cacheIn(fresh('cache'), settings)).storePathLayer(infos);
    const direct = await writeLayer(storePathsSource(infos), { compression: 'none', dir: fresh('direct'), mtime: 1 });
    expect(composed.layer.descriptor.digest).toBe(direct.digest);
    expect(composed.layer.diffId).toBe(direct.diffId);
  });

  it('keys on the settings: another mtime or level is another part', async () => {
    const info = [...closure.paths.values()][0]!;
    const cacheDir = fresh('cache');
    await (await cacheIn(cacheDir)).storePathLayer([info]);
    const otherMtime = await (await cacheIn(cacheDir, { ...GZIP, mtime: 2 })).storePathLayer([info]);
    const otherLevel = await (await cacheIn(cacheDir, { ...GZIP, gzipLevel: 1 })).storePathLayer([info]);
    expect([otherMtime.reused, otherLevel.reused]).toEqual([false, false]);
    expect(readdirSync(join(cacheDir, `v${CACHE_FORMAT_VERSION}/parts`))).toHaveLength(3);
  });
});

describe('a store-path layer written straight to an output', () => {
  it.each(['gzip', 'none'] as const)('is the cache\'s composition of the same paths, byte for byte (%s)', async (compression) => {
    const infos = [...closure.paths.values()];
    const format: LayerFormat = { ...GZIP, compression };
    const served = await (await cacheIn(fresh('cache'), format)).storePathLayer(infos);
    const file = join(fresh('direct'), 'layer');
    const handle = await open(file, 'w');
    const written = await writeStorePathsLayer(infos, await storePathsEnds(format), format, { handle, at: 0, path: file });
    await handle.close();
    expect({ digest: written.digest, diffId: written.diffId, size: written.size }).toEqual({
      digest: served.layer.descriptor.digest,
      diffId: served.layer.diffId,
      size: served.layer.descriptor.size,
    });
    expect(readFileSync(file).equals(blobBytes(served.layer))).toBe(true);
  });
});

describe('cache maintenance', () => {
  it('prunes the least recently used entries first, down to the size asked', async () => {
    const cacheDir = fresh('cache');
    const cache = await cacheIn(cacheDir);
    const infos = [...closure.paths.values()].sort((a, b) => b.narSize - a.narSize);
    for (const info of infos) await cache.storePathLayer([info]);
    const parts = join(cacheDir, `v${CACHE_FORMAT_VERSION}/parts`);
    // Make the biggest path the most recently used; the others older, in order.
    const byPath = new Map(readdirSync(parts).map((name) => [JSON.parse(readFileSync(join(parts, name), 'utf8')).value.storePath as string, join(parts, name)]));
    const base = Date.now() / 1000 - 1000;
    infos.forEach((info, i) => utimesSync(byPath.get(info.path)!, base + (infos.length - i) * 10, base + (infos.length - i) * 10));
    const before = await cacheStats(cacheDir);
    expect(before.entries).toEqual({ parts: 3, layers: 3, wheels: 0, inputs: 0, listings: 0 });
    // The biggest path's bytes lie in its layer's blob (the part plus the layer's first and last members).
    const biggest = JSON.parse(readFileSync(byPath.get(infos[0]!.path)!, 'utf8')).value;
    const biggestSize = statSync(join(cacheDir, `v${CACHE_FORMAT_VERSION}/blobs`, biggest.blob.slice(7))).size;
    expect(biggestSize).toBeGreaterThan(biggest.size);
    const result = await pruneCache(cacheDir, biggestSize + 10);
    expect(result.bytes).toBe(biggestSize);
    const left = readdirSync(parts).map((name) => JSON.parse(readFileSync(join(parts, name), 'utf8')).value.storePath);
    expect(left).toEqual([infos[0]!.path]);
    // The survivor still serves a build.
    expect((await (await cacheIn(cacheDir)).storePathLayer([infos[0]!])).reused).toBe(true);
  });

  it('removes old temp files and unreferenced blobs, but not young ones', async () => {
    const cacheDir = fresh('cache');
    await CacheStore.open(cacheDir);
    const old = (Date.now() - 2 * GRACE_MS) / 1000;
    for (const [sub, name] of [['tmp', 'old.tmp'], ['tmp', 'young.tmp'], ['blobs', 'a'.repeat(64)], ['blobs', 'b'.repeat(64)]] as const) {
      writeFileSync(join(cacheDir, `v${CACHE_FORMAT_VERSION}`, sub, name), 'x');
    }
    utimesSync(join(cacheDir, `v${CACHE_FORMAT_VERSION}/tmp/old.tmp`), old, old);
    utimesSync(join(cacheDir, `v${CACHE_FORMAT_VERSION}/blobs`, 'a'.repeat(64)), old, old);
    const stats = await cacheStats(cacheDir);
    expect([stats.tempFiles, stats.unreferencedBlobs]).toEqual([2, 2]);
    await pruneCache(cacheDir, 1 << 30);
    expect(readdirSync(join(cacheDir, `v${CACHE_FORMAT_VERSION}/tmp`))).toEqual(['young.tmp']);
    expect(readdirSync(join(cacheDir, `v${CACHE_FORMAT_VERSION}/blobs`))).toEqual(['b'.repeat(64)]);
  });

  it('removes the work directories of builds that are gone, never a running one’s', async () => {
    const cacheDir = fresh('cache');
    await CacheStore.open(cacheDir);
    const builds = join(cacheDir, `v${CACHE_FORMAT_VERSION}/builds`);
    const old = (Date.now() - 2 * GRACE_MS) / 1000;
    // 999999999 is above Linux's largest pid: no such process. This process runs.
    for (const name of ['999999999-killed', `${process.pid}-running`, '999999998-young']) {
      mkdirSync(join(builds, name));
      writeFileSync(join(builds, name, 'layer'), 'x');
      if (name !== '999999998-young') utimesSync(join(builds, name), old, old);
    }
    await pruneCache(cacheDir, 1 << 30);
    expect(readdirSync(builds).sort()).toEqual([`${process.pid}-running`, '999999998-young']);
  });

  it('reads sizes with binary units', () => {
    expect(parseSize('2048')).toBe(2048);
    expect(parseSize('500M')).toBe(500 * 1024 ** 2);
    expect(parseSize('1.5GiB')).toBe(1.5 * 1024 ** 3);
    expect(parseSize('10g')).toBe(10 * 1024 ** 3);
    expect(() => parseSize('ten')).toThrow('--max-size takes a size such as 500M, 10G or 2048 (bytes), got "ten"');
  });

  it('lives under XDG_CACHE_HOME when set (absolute), else ~/.cache', () => {
    expect(defaultCacheDir({ XDG_CACHE_HOME: '/var/cache/ci' })).toBe('/var/cache/ci/nix2oci');
    expect(defaultCacheDir({ XDG_CACHE_HOME: 'relative' })).toMatch(/\/\.cache\/nix2oci$/);
    expect(defaultCacheDir({})).toMatch(/\/\.cache\/nix2oci$/);
  });
});
