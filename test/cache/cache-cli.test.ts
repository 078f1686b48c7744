import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CACHE_FORMAT_VERSION } from '../../src/layer/format.js';
import { execFileSync, spawn } from 'node:child_process';
import { GZIP_MEMBER_HEADER } from '../../src/layer/format.js';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, cliOk, REPO, runCli } from '../helpers/cli.js';
import { exportClosure, nixBuild } from '../helpers/nix.js';
import { podmanLoad, podmanRemove, podmanRun } from '../helpers/podman.js';
import { tools } from '../helpers/tools.js';

/**
 * The layer cache through the CLI, on real Nix closures: hits and misses are read from the --json
 * summary (`reused` per layer), never assumed, and every warm result is compared with a cold build.
 */

interface Summary {
  manifestDigest: string;
  reused: number;
  built: number;
  layers: { digest: string; diffId: string; size: number; contents: string[]; reused: boolean }[];
}

const sha256 = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');

let dir: string;
let n = 0;
const fresh = (name: string) => join(dir, `${name}-${++n}`);

function build(closure: string, cache: string, ...extra: string[]): Summary & { out: string } {
  const out = fresh('image') + '.tar';
  const summary = JSON.parse(cliOk(['build-image', '-q', '--json', '--closure', closure, '--cache-dir', cache, '--output', out, ...extra]).stdout) as Summary;
  return { ...summary, out };
}

const layerOf = (s: Summary, path: string) => s.layers.find((l) => l.contents.length === 1 && l.contents[0] === path)!;
const reusedOf = (s: Summary) => Object.fromEntries(s.layers.map((l) => [l.contents.map(short).join('+'), l.reused]));
const short = (p: string) => p.replace(/^\/nix\/store\/[0-9a-z]{32}-/, '');

/** The part entry of one store path, and the blob its bytes are in (its own, or its layer's). */
function partOf(cache: string, storePath: string): { entry: string; blob: string } {
  const parts = join(cache, `v${CACHE_FORMAT_VERSION}/parts`);
  for (const name of readdirSync(parts)) {
    const value = JSON.parse(readFileSync(join(parts, name), 'utf8')).value;
    if (value.storePath === storePath) return { entry: join(parts, name), blob: join(cache, `v${CACHE_FORMAT_VERSION}/blobs`, (value.blob ?? value.digest).slice(7)) };
  }
  throw new Error(`no part for ${storePath} in ${cache}`);
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'nix2oci-cache-cli-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe.runIf(tools('nix-build', 'nix-store'))('the layer cache on a real Nix closure', () => {
  let a: string;
  let b1: string;
  let b2: string;
  let v1: string;
  let v2: string;

  beforeAll(() => {
    // root → a, b; v2 changes b, and so (as Nix does) the root that refers to it; a stays.
    const paths = nixBuild(`let
      a = mkDrv "cache-a" "mkdir -p $out/share; seq 1 60000 > $out/share/numbers; echo a > $out/a";
      b = text: mkDrv "cache-b" "mkdir -p $out; echo \${text} > $out/b";
      root = b: mkDrv "cache-root" "mkdir -p $out; echo \${a} \${b} > $out/refs";
    in [ a (b "one") (b "two") (root (b "one")) (root (b "two")) ]`);
    [a, b1, b2] = paths as [string, string, string];
    v1 = join(dir, 'v1.closure');
    v2 = join(dir, 'v2.closure');
    exportClosure([paths[3]!], v1);
    exportClosure([paths[4]!], v2);
  });

  it('a warm rebuild reuses every layer but the image root and gives the cold build’s image', () => {
    const cache = fresh('cache');
    const cold = build(v1, cache);
    expect(cold.layers.map((l) => l.reused)).toEqual([false, false, false, false]);
    const warm = build(v1, cache);
    expect(reusedOf(warm)).toEqual({ 'cache-a': true, 'cache-b': true, 'cache-root': true, 'image-root': false });
    expect(warm.manifestDigest).toBe(cold.manifestDigest);
    expect(sha256(warm.out)).toBe(sha256(cold.out));
    const uncached = JSON.parse(cliOk(['build-image', '-q', '--json', '--closure', v1, '--no-cache', '--output', fresh('nc')]).stdout) as Summary;
    expect(uncached.manifestDigest).toBe(cold.manifestDigest);
  });

  it('a changed store path rebuilds exactly the layers that changed, with a cold build’s digests', () => {
    const cache = fresh('cache');
    build(v1, cache);
    const rebuilt = build(v2, cache);
    const cold = build(v2, fresh('cache'));
    expect(reusedOf(rebuilt)).toEqual({ 'cache-a': true, 'cache-b': false, 'cache-root': false, 'image-root': false });
    expect(layerOf(rebuilt, b2)).toBeDefined();
    expect(rebuilt.manifestDigest).toBe(cold.manifestDigest);
    expect(rebuilt.layers.map((l) => l.digest)).toEqual(cold.layers.map((l) => l.digest));
    expect(layerOf(rebuilt, a).digest).toBe(layerOf(build(v1, fresh('cache')), a).digest);
    void b1;
  });

  it('regrouped paths come from their cached parts: same digests as cold, nothing compressed again', () => {
    const byPath = fresh('cache');
    const grouped = fresh('cache');
    const coldSingle = build(v1, byPath);
    const coldGrouped = build(v1, grouped, '--max-layers', '2');
    expect(coldGrouped.layers).toHaveLength(2);
    expect(coldGrouped.layers[0]!.contents).toHaveLength(3);

    // A cache filled by one grouping serves the other without compressing.
    const singleFromGrouped = build(v1, grouped);
    const groupedFromSingle = build(v1, byPath, '--max-layers', '2');
    expect(singleFromGrouped.layers.slice(0, 3).every((l) => l.reused)).toBe(true);
    expect(groupedFromSingle.layers[0]!.reused).toBe(true);
    expect(singleFromGrouped.manifestDigest).toBe(coldSingle.manifestDigest);
    expect(groupedFromSingle.manifestDigest).toBe(coldGrouped.manifestDigest);
    // The grouped layer's tar is exactly the paths' tars in a row: its diffID is a cold one's.
    expect(groupedFromSingle.layers[0]!.diffId).toBe(coldGrouped.layers[0]!.diffId);
  });

  const damages: [string, (file: string) => void][] = [
    ['a flipped byte', (f) => {
      const bytes = readFileSync(f);
      bytes[bytes.length >> 1] ^= 0x40;
      writeFileSync(f, bytes);
    }],
    ['a truncated blob', (f) => truncateSync(f, 100)],
    ['a deleted blob whose entry is kept', (f) => rmSync(f)],
  ];
  for (const [what, damage] of damages) {
    it(`a cached part with ${what} is detected and rebuilt`, () => {
      const cache = fresh('cache');
      const cold = build(v1, cache);
      const part = partOf(cache, a);
      damage(part.blob);
      const healed = build(v1, cache);
      expect(reusedOf(healed)).toEqual({ 'cache-a': false, 'cache-b': true, 'cache-root': true, 'image-root': false });
      expect(sha256(healed.out)).toBe(sha256(cold.out));
      expect(build(v1, cache).layers.slice(0, 3).every((l) => l.reused)).toBe(true);
    });
  }

  it('an unreadable entry is a miss, not an error', () => {
    const cache = fresh('cache');
    const cold = build(v1, cache);
    writeFileSync(partOf(cache, a).entry, '{"digest": 12');
    const again = build(v1, cache);
    expect(layerOf(again, a).reused).toBe(false);
    expect(again.manifestDigest).toBe(cold.manifestDigest);
  });

  it('a layer entry whose recorded digest was altered is not trusted', () => {
    const cache = fresh('cache');
    const cold = build(v1, cache);
    const layers = join(cache, `v${CACHE_FORMAT_VERSION}/layers`);
    for (const name of readdirSync(layers)) {
      const stored = JSON.parse(readFileSync(join(layers, name), 'utf8'));
      stored.value.digest = `sha256:${'0'.repeat(64)}`;
      writeFileSync(join(layers, name), JSON.stringify(stored));
    }
    const again = build(v1, cache);
    // Parts are intact, so nothing is compressed; the digests are computed again, not read.
    expect(again.layers.slice(0, 3).every((l) => l.reused)).toBe(true);
    expect(again.manifestDigest).toBe(cold.manifestDigest);
  });

  it('two builds at once on one empty cache both succeed with identical images', async () => {
    const cache = fresh('cache');
    const outs = [fresh('par') + '.tar', fresh('par') + '.tar'];
    const codes = await Promise.all(
      outs.map(
        (out) =>
          new Promise<{ code: number | null; stderr: string }>((resolve) => {
            const child = spawn(process.execPath, [CLI, 'build-image', '-q', '--closure', v1, '--cache-dir', cache, '--output', out], { cwd: REPO });
            let stderr = '';
            child.stderr.on('data', (d) => (stderr += d));
            child.on('close', (code) => resolve({ code, stderr }));
          }),
      ),
    );
    expect(codes).toEqual([{ code: 0, stderr: '' }, { code: 0, stderr: '' }]);
    expect(sha256(outs[0]!)).toBe(sha256(outs[1]!));
    const after = build(v1, cache);
    expect(after.layers.slice(0, 3).every((l) => l.reused)).toBe(true);
    expect(sha256(after.out)).toBe(sha256(outs[0]!));
    expect(readdirSync(join(cache, `v${CACHE_FORMAT_VERSION}/tmp`))).toEqual([]);
  });
});

describe.runIf(tools('nix-build', 'nix-store'))('a build killed mid-way', () => {
  it('leaves the cache consistent, and the next build is correct', async () => {
    // One path large enough to be caught while its part is being compressed.
    const [big] = nixBuild(`mkDrv "cache-big" "mkdir -p $out; seq 1 2500000 > $out/numbers; seq 7 2000000 > $out/more"`);
    const closure = join(dir, 'big.closure');
    exportClosure([big!], closure);
    const cache = fresh('cache');
    const out = fresh('killed') + '.tar';
    const child = spawn(process.execPath, [CLI, 'build-image', '-q', '--closure', closure, '--cache-dir', cache, '--output', out], { cwd: REPO });
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
    const tmp = join(cache, `v${CACHE_FORMAT_VERSION}/tmp`);
    const deadline = Date.now() + 60_000;
    while (!(existsSync(tmp) && readdirSync(tmp).length > 0) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    child.kill('SIGKILL');
    expect(await exited).toBe('SIGKILL');
    expect(existsSync(out)).toBe(false);

    // Whatever the cache holds is whole: every entry's blob has its digest.
    for (const name of readdirSync(join(cache, `v${CACHE_FORMAT_VERSION}/parts`))) {
      const entry = JSON.parse(readFileSync(join(cache, `v${CACHE_FORMAT_VERSION}/parts`, name), 'utf8')).value;
      const blob = entry.blob ?? entry.digest;
      expect(`sha256:${sha256(join(cache, `v${CACHE_FORMAT_VERSION}/blobs`, blob.slice(7)))}`).toBe(blob);
    }
    const next = build(closure, cache);
    const cold = build(closure, fresh('cache'));
    expect(sha256(next.out)).toBe(sha256(cold.out));
    // The big path was compressed as a member per 4 MiB of tar (in parallel), and gzip reads them all.
    const part = partOf(cache, big!);
    const bytes = readFileSync(part.blob);
    let members = 0;
    for (let at = bytes.indexOf(GZIP_MEMBER_HEADER); at >= 0; at = bytes.indexOf(GZIP_MEMBER_HEADER, at + 1)) members++;
    expect(members).toBeGreaterThanOrEqual(8);
    execFileSync('gzip', ['-t', part.blob]);
    const stats = JSON.parse(cliOk(['cache', 'stats', '--json', '--cache-dir', cache]).stdout);
    expect(stats.entries.parts).toBe(1);
    expect(stats.unreferencedBlobs).toBe(0);
  });
});

describe.runIf(tools('podman'))('images built from cached parts', () => {
  const loaded: string[] = [];
  afterAll(() => podmanRemove(...loaded));

  it('load and run with podman like cold-built ones', () => {
    const closure = join(REPO, 'layers/demo/demo.closure');
    const recipe = join(REPO, 'layers/demo/image.json');
    const cache = fresh('cache');
    // Fill the cache with all paths in one layer, then build the usual one-path layers from it.
    cliOk(['build-image', '-q', '--closure', closure, '--recipe', recipe, '--cache-dir', cache, '--max-layers', '2', '--output', fresh('grouped')]);
    const out = fresh('from-parts') + '.tar';
    const summary = JSON.parse(
      cliOk(['build-image', '-q', '--json', '--closure', closure, '--recipe', recipe, '--cache-dir', cache, '--output', out, '--tag', 'localhost/nix2oci-cache-test:parts']).stdout,
    ) as Summary;
    expect(summary.layers.map((l) => l.reused)).toEqual([true, true, true, false]);
    const id = podmanLoad(out);
    loaded.push(id);
    expect(podmanRun(id, ['one', 'two'])).toBe('hello from nix2oci\nserved from a Nix store path\nargs: one two\n');
  });
});

describe('remembered export indexes', () => {
  it('an unchanged export is not read again; one changed in place, same size and mtime, is', () => {
    const closure = fresh('demo') + '.closure';
    writeFileSync(closure, readFileSync(join(REPO, 'layers/demo/demo.closure')));
    const cache = fresh('cache');
    const run = () => {
      const out = fresh('image') + '.tar';
      const result = cliOk(['build-image', '--json', '--closure', closure, '--entrypoint', '/bin/sh', '--cache-dir', cache, '--output', out]);
      return { summary: JSON.parse(result.stdout) as Summary, recalled: result.stderr.includes(`${closure}: unchanged since it was last indexed`) };
    };
    const first = run();
    const second = run();
    expect([first.recalled, second.recalled]).toEqual([false, true]);
    expect(second.summary.manifestDigest).toBe(first.summary.manifestDigest);
    expect(second.summary.reused).toBe(second.summary.layers.length - 1);

    // One byte of a file inside a NAR, in place: the size stays, and the mtime is set back; the change time cannot be.
    const { mtime, atime } = statSync(closure);
    const bytes = readFileSync(closure);
    const at = bytes.indexOf('hello from nix2oci');
    expect(at).toBeGreaterThan(0);
    bytes[at] = 'j'.charCodeAt(0);
    writeFileSync(closure, bytes);
    utimesSync(closure, atime, mtime);
    const third = run();
    expect(third.recalled).toBe(false);
    expect(third.summary.manifestDigest).not.toBe(first.summary.manifestDigest);
    // The layer holding the changed path is built again, besides the image root; the rest are reused.
    expect(third.summary.built).toBe(2);
  });
});

describe.runIf(tools('nix-build', 'nix-store'))('nix2oci cache', () => {
  it('stats counts what a build left; prune --max-size 0 empties it, and the next build starts cold', () => {
    const closure = join(REPO, 'layers/demo/demo.closure');
    const cache = fresh('cache');
    build(closure, cache);
    const stats = JSON.parse(cliOk(['cache', 'stats', '--json', '--cache-dir', cache]).stdout);
    expect(stats.entries).toEqual({ parts: 3, layers: 3, wheels: 0, inputs: 1, listings: 0, verified: 3 });
    // The build worked in the cache (its files hard-linked in and out) and left nothing there.
    expect(readdirSync(join(cache, `v${CACHE_FORMAT_VERSION}/builds`))).toEqual([]);
    expect(stats.blobs).toBe(3);
    expect(stats.bytes).toBeGreaterThan(100_000);
    expect(cliOk(['cache', 'stats', '--cache-dir', cache]).stdout).toMatch(/^cache: .*\nsize: .* in 3 blobs \(0 unreferenced\)\nentries: 3 store path parts, 3 composed layers, 0 wheel layers, 1 input files read, 0 store path listings, 3 layers measured\n/);

    expect(cliOk(['cache', 'prune', '--max-size', '0', '--cache-dir', cache]).stdout).toMatch(/^pruned .*: removed 10 entries and 3 blobs \(.*\); 0 B left\n$/);
    expect(JSON.parse(cliOk(['cache', 'stats', '--json', '--cache-dir', cache]).stdout)).toMatchObject({ blobs: 0, bytes: 0 });
    expect(build(closure, cache).layers.every((l) => !l.reused)).toBe(true);
  });

  it('prune refuses a size it cannot read', () => {
    const result = runCli(['cache', 'prune', '--max-size', 'lots', '--cache-dir', fresh('cache')]);
    expect(result.code).toBe(1);
    expect(result.stderr).toBe('nix2oci: --max-size takes a size such as 500M, 10G or 2048 (bytes), got "lots"\n');
  });
});

describe('cache flags', () => {
  it('--cache-dir with --no-cache is refused', () => {
    const result = runCli(['build-image', '--closure', join(REPO, 'layers/demo/demo.closure'), '--cache-dir', dir, '--no-cache', '--output', fresh('x')]);
    expect(result.code).toBe(1);
    expect(result.stderr).toBe('nix2oci: --cache-dir and --no-cache contradict each other; give one\n');
  });

  it('an unusable cache directory is a one-line error', () => {
    const file = fresh('not-a-dir');
    writeFileSync(file, '');
    const result = runCli(['build-image', '--closure', join(REPO, 'layers/demo/demo.closure'), '--cache-dir', file, '--output', fresh('x')]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^nix2oci: cannot use cache directory .*not-a-dir.*: ENOTDIR \(pick another with --cache-dir, or --no-cache\)\n$/);
  });
});
