import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
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

async function cacheIn(cacheDir: string, settings: LayerFormat = GZIP, warn?: (line: string) => void): Promise<LayerCache> {
  return new LayerCache(await CacheStore.open(cacheDir), settings, fresh('work'), { hashes: defaultHashPool(), warn });
}

/** The value of every entry of a kind, by file name. */
function entriesOf(cacheDir: string, kind: string): Map<string, Record<string, unknown>> {
  const dir = join(cacheDir, `v${CACHE_FORMAT_VERSION}`, kind);
  return new Map(readdirSync(dir).map((name) => [name, JSON.parse(readFileSync(join(dir, name), 'utf8')).value]));
}

/** Rewrites an entry as a liar would: another value, its checksum made to match. */
function forgeEntry(cacheDir: string, kind: string, name: string, value: unknown): void {
  const sum = createHash('sha256').update(JSON.stringify(value)).digest('hex');
  writeFileSync(join(cacheDir, `v${CACHE_FORMAT_VERSION}`, kind, name), `${JSON.stringify({ sum, value })}\n`);
}

const sha256Of = (bytes: Buffer) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

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

describe('a cache entry whose diffID lies', () => {
  it.each([['one path', 1], ['three paths', 3]] as const)('is caught, reported, dropped, and the layer made right (%s)', async (_name, count) => {
    const infos = [...closure.paths.values()].slice(0, count);
    const cacheDir = fresh('cache');
    const cold = await (await cacheIn(cacheDir)).storePathLayer(infos);
    const truth = sha256Of(gunzipSync(blobBytes(cold.layer)));
    expect(cold.layer.diffId).toBe(truth);
    // The blob stays sound, so its digest checks out; only the diffID the entry gives is wrong.
    const [[name, entry]] = [...entriesOf(cacheDir, 'layers')];
    const lie = `sha256:${'0'.repeat(64)}`;
    forgeEntry(cacheDir, 'layers', name!, { ...entry, diffId: lie });
    const warnings: string[] = [];
    const served = await (await cacheIn(cacheDir, GZIP, (w) => warnings.push(w))).storePathLayer(infos);
    expect(served.layer.diffId).toBe(truth);
    expect(served.layer.descriptor.digest).toBe(cold.layer.descriptor.digest);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain(`layers/${name}`);
    expect(warnings[0]).toContain(`diffID ${lie}`);
    expect(warnings[0]).toContain(`diffID ${truth}`);
    // The entry was written again, truthfully: the next build hears nothing.
    expect(entriesOf(cacheDir, 'layers').get(name!)!.diffId).toBe(truth);
    const again: string[] = [];
    expect((await (await cacheIn(cacheDir, GZIP, (w) => again.push(w))).storePathLayer(infos)).layer.diffId).toBe(truth);
    expect(again).toEqual([]);
  });

  it('a blob measured once is not read again; without its measurement (an older cache, a crash) it is measured on first use', async () => {
    const infos = [...closure.paths.values()];
    const cacheDir = fresh('cache');
    const cold = await (await cacheIn(cacheDir)).storePathLayer(infos);
    // Made by this cache: its measurement was filed from the pass that wrote it.
    const measured = entriesOf(cacheDir, 'verified');
    expect([...measured.values()].map((m) => m.diffId)).toContain(cold.layer.diffId);
    rmSync(join(cacheDir, `v${CACHE_FORMAT_VERSION}`, 'verified'), { recursive: true });
    mkdirSync(join(cacheDir, `v${CACHE_FORMAT_VERSION}`, 'verified'));
    const warnings: string[] = [];
    const warm = await (await cacheIn(cacheDir, GZIP, (w) => warnings.push(w))).storePathLayer(infos);
    expect([warm.reused, warm.layer.diffId, warnings]).toEqual([true, cold.layer.diffId, []]);
    expect([...entriesOf(cacheDir, 'verified').values()]).toEqual([
      { digest: cold.layer.descriptor.digest, diffId: cold.layer.diffId, uncompressedSize: cold.layer.uncompressedSize },
    ]);
    // A measurement that disagrees with its entry is not believed either: the blob is measured again.
    const [[file, record]] = [...entriesOf(cacheDir, 'verified')];
    forgeEntry(cacheDir, 'verified', file!, { ...record, diffId: `sha256:${'1'.repeat(64)}` });
    const third = await (await cacheIn(cacheDir, GZIP, (w) => warnings.push(w))).storePathLayer(infos);
    expect([third.layer.diffId, warnings]).toEqual([cold.layer.diffId, []]);
    expect(entriesOf(cacheDir, 'verified').get(file!)!.diffId).toBe(cold.layer.diffId);
  });

  it('uncompressed: a diffID other than the digest is a lie, found without reading the blob', async () => {
    const infos = [...closure.paths.values()];
    const settings: LayerFormat = { ...GZIP, compression: 'none' };
    const cacheDir = fresh('cache');
    const cold = await (await cacheIn(cacheDir, settings)).storePathLayer(infos);
    const [[name, entry]] = [...entriesOf(cacheDir, 'layers')];
    forgeEntry(cacheDir, 'layers', name!, { ...entry, diffId: `sha256:${'2'.repeat(64)}` });
    const warnings: string[] = [];
    const served = await (await cacheIn(cacheDir, settings, (w) => warnings.push(w))).storePathLayer(infos);
    expect(served.layer.diffId).toBe(cold.layer.descriptor.digest);
    expect(warnings).toEqual([expect.stringMatching(/an uncompressed layer's diffID is its digest; the layer was made again$/)]);
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
    expect(before.entries).toEqual({ parts: 3, layers: 3, wheels: 0, verified: 3, inputs: 0, listings: 0 });
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

  it('a build removes what killed builds of this host left, at once; a running one\'s and another host\'s young ones stay', async () => {
    const cacheDir = fresh('cache');
    const store = await CacheStore.open(cacheDir);
    const root = join(cacheDir, `v${CACHE_FORMAT_VERSION}`);
    // This process's own names, and the same with a pid that cannot run (above Linux's largest).
    const mine = basename(store.tempPath());
    const killed = mine.replace(/^\d+-/, '999999999-');
    const elsewhere = mine.replace(/^(\d+)-[0-9a-f]{8}-/, '999999999-00000000-');
    for (const name of [mine, killed, elsewhere]) writeFileSync(join(root, 'tmp', name), 'x');
    const work = await store.makeBuildDir();
    const killedWork = join(root, 'builds', basename(work).replace(/^\d+-/, '999999999-'));
    mkdirSync(killedWork);
    expect(await store.sweep()).toBe(2);
    expect(readdirSync(join(root, 'tmp')).sort()).toEqual([elsewhere, mine].sort());
    expect(readdirSync(join(root, 'builds'))).toEqual([basename(work)]);
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
