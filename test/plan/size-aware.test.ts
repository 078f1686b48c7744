import { describe, it, expect } from 'vitest';
import { createHash } from 'node:crypto';
import { planLayers, type LayerPlan, type PlanStrategy } from '../../src/plan/plan.js';
import type { Closure, StorePathInfo } from '../../src/nix/types.js';
import { UserError } from '../../src/util/errors.js';

const MB = 1e6;

interface Def {
  size: number;
  refs: string[];
}

/**
 * A closure from `{ name: { size, refs } }` with Nix's hashing in spirit: a path's hash covers its own
 * version and its references' hashes, so bumping a path changes every path that depends on it.
 */
function closure(defs: Record<string, Def>, versions: Record<string, number> = {}): Closure {
  const pathOf = new Map<string, string>();
  const resolve = (name: string): string => {
    const known = pathOf.get(name);
    if (known) return known;
    const def = defs[name];
    if (!def) throw new Error(`no ${name}`);
    const refs = def.refs.map(resolve);
    const hash = createHash('sha256').update(`${name} ${versions[name] ?? 0} ${refs.join(' ')}`).digest('hex').slice(0, 32);
    const path = `/nix/store/${hash}-${name}`;
    pathOf.set(name, path);
    return path;
  };
  const infos = Object.keys(defs).map((name): StorePathInfo => ({
    path: resolve(name),
    references: defs[name]!.refs.map(resolve).sort(),
    deriver: null,
    narHash: '0'.repeat(64),
    narSize: defs[name]!.size,
    source: { file: 'x', offset: 0 },
  }));
  const referenced = new Set(infos.flatMap((i) => i.references));
  const paths = new Map(infos.sort((a, b) => (a.path < b.path ? -1 : 1)).map((i) => [i.path, i]));
  return { paths, roots: [...paths.keys()].filter((p) => !referenced.has(p)) };
}

const nameOf = (path: string) => path.slice('/nix/store/'.length + 33);
const names = (plan: LayerPlan[]) => plan.map((l) => l.paths.map(nameOf).sort());

/**
 * What a registry receives for the new image: the bytes of every layer whose exact set of store paths
 * is not a layer of the old image (a layer's digest changes with any of its paths).
 */
function bytesChanged(before: Closure, after: Closure, strategy: PlanStrategy, maxLayers: number): number {
  const old = new Set(planLayers(before, { maxLayers, strategy }).map((l) => l.paths.join('\n')));
  return planLayers(after, { maxLayers, strategy })
    .filter((l) => !old.has(l.paths.join('\n')))
    .reduce((sum, l) => sum + l.paths.reduce((s, p) => s + after.paths.get(p)!.narSize, 0), 0);
}

/**
 * The shape of the vLLM ROCm image: glibc and Python under everything, ~120 small Python packages,
 * torch and ROCm libraries in the gigabytes, vllm on top and a small application root.
 */
function vllmLike(): Record<string, Def> {
  const defs: Record<string, Def> = {
    glibc: { size: 30 * MB, refs: [] },
    'gcc-lib': { size: 8 * MB, refs: ['glibc'] },
    zlib: { size: 0.2 * MB, refs: ['glibc'] },
    openssl: { size: 6 * MB, refs: ['glibc'] },
    python3: { size: 110 * MB, refs: ['glibc', 'zlib', 'openssl'] },
    'rocm-runtime': { size: 400 * MB, refs: ['glibc', 'gcc-lib'] },
    'rocblas': { size: 1800 * MB, refs: ['rocm-runtime', 'glibc'] },
    'miopen': { size: 900 * MB, refs: ['rocm-runtime', 'rocblas', 'glibc'] },
    'torch': { size: 2400 * MB, refs: ['python3', 'rocm-runtime', 'rocblas', 'miopen', 'gcc-lib'] },
  };
  const small: string[] = [];
  for (let i = 0; i < 120; i++) {
    const name = `python3.11-pkg${String(i).padStart(3, '0')}`;
    defs[name] = { size: (0.1 + ((i * 37) % 23) / 2) * MB, refs: ['python3', ...(i % 5 === 0 && i > 0 ? [`python3.11-pkg${String(i - 1).padStart(3, '0')}`] : [])] };
    small.push(name);
  }
  defs['python3.11-numpy'] = { size: 60 * MB, refs: ['python3', 'gcc-lib'] };
  defs['python3.11-vllm'] = { size: 150 * MB, refs: ['python3', 'torch', 'python3.11-numpy', ...small] };
  defs['app'] = { size: 0.05 * MB, refs: ['python3.11-vllm', 'python3'] };
  return defs;
}

describe('planLayers, size-aware', () => {
  it('gives the largest paths layers of their own, with what only they use', () => {
    const c = closure({
      libc: { size: 10, refs: [] },
      big: { size: 1000, refs: ['libc', 'big-helper'] },
      'big-helper': { size: 5, refs: [] },
      medium: { size: 500, refs: ['libc'] },
      app: { size: 1, refs: ['big', 'medium', 'app-lib'] },
      'app-lib': { size: 2, refs: [] },
    });
    expect(names(planLayers(c, { maxLayers: 4, strategy: 'size-aware' }))).toEqual([
      ['libc'], // used by both anchors: the bottom
      ['big', 'big-helper'],
      ['medium'],
      ['app', 'app-lib'], // reached by no anchor: the top
    ]);
  });

  it('puts paths used by the same anchors together, and keeps within the budget', () => {
    const c = closure(vllmLike());
    for (const maxLayers of [2, 5, 10, 40, 100]) {
      const plan = planLayers(c, { maxLayers, strategy: 'size-aware' });
      expect(plan.length).toBeLessThanOrEqual(maxLayers);
      expect(plan.flatMap((l) => l.paths).sort()).toEqual([...c.paths.keys()].sort());
    }
    const plan = names(planLayers(c, { maxLayers: 10, strategy: 'size-aware' }));
    expect(plan).toContainEqual(['torch']);
    expect(plan).toContainEqual(['rocblas']);
    // The 120 small packages are used only by vllm: they go with it, not one layer each.
    const vllm = plan.find((l) => l.includes('python3.11-vllm'))!;
    expect(vllm).toContain('python3.11-pkg042');
  });

  it('gives every path its own layer when the closure fits', () => {
    const c = closure({ a: { size: 1, refs: ['b'] }, b: { size: 2, refs: [] }, c: { size: 3, refs: ['b'] } });
    expect(planLayers(c, { maxLayers: 3, strategy: 'size-aware' }).map((l) => l.paths.length)).toEqual([1, 1, 1]);
  });

  it('is deterministic whatever the closure map order', () => {
    const c = closure(vllmLike());
    const shuffled: Closure = { ...c, paths: new Map([...c.paths].reverse()) };
    expect(planLayers(shuffled, { maxLayers: 12, strategy: 'size-aware' })).toEqual(planLayers(c, { maxLayers: 12, strategy: 'size-aware' }));
  });

  it('refuses an unknown strategy with a one-line message', () => {
    const c = closure({ a: { size: 1, refs: [] } });
    expect(() => planLayers(c, { maxLayers: 3, strategy: 'fastest' as PlanStrategy })).toThrow(UserError);
    expect(() => planLayers(c, { maxLayers: 3, strategy: 'fastest' as PlanStrategy })).toThrow(/unknown layer strategy "fastest"/);
  });
});

describe('bytes changed between two closures that differ in one store path', () => {
  const defs = vllmLike();
  const base = closure(defs);
  const total = [...base.paths.values()].reduce((s, i) => s + i.narSize, 0);
  const cases: [what: string, bumped: string][] = [
    ['a small Python package vllm uses', 'python3.11-pkg017'],
    ['vllm itself (a new wheel)', 'python3.11-vllm'],
    ['the application', 'app'],
    ['numpy', 'python3.11-numpy'],
  ];
  const rows: string[] = [];

  for (const [what, bumped] of cases) {
    it(`bumping ${what}: size-aware changes fewer bytes than popularity`, () => {
      const after = closure(defs, { [bumped]: 1 });
      const maxLayers = 40;
      const popularity = bytesChanged(base, after, 'popularity', maxLayers);
      const sizeAware = bytesChanged(base, after, 'size-aware', maxLayers);
      rows.push(`${what.padEnd(36)} popularity ${(popularity / MB).toFixed(0).padStart(5)} MB   size-aware ${(sizeAware / MB).toFixed(0).padStart(5)} MB   of ${(total / MB).toFixed(0)} MB`);
      // Whatever the strategy, the bumped path and everything above it change.
      expect(sizeAware).toBeGreaterThan(0);
      expect(sizeAware).toBeLessThan(popularity);
      // Torch, ROCm and the rest of the gigabytes stay put.
      expect(sizeAware).toBeLessThan(0.1 * total);
    });
  }

  it('bumping glibc changes nearly everything under either strategy', () => {
    const after = closure(defs, { glibc: 1 });
    const popularity = bytesChanged(base, after, 'popularity', 40);
    const sizeAware = bytesChanged(base, after, 'size-aware', 40);
    rows.push(`${'glibc (under everything)'.padEnd(36)} popularity ${(popularity / MB).toFixed(0).padStart(5)} MB   size-aware ${(sizeAware / MB).toFixed(0).padStart(5)} MB`);
    expect(popularity).toBeGreaterThan(0.95 * total);
    expect(sizeAware).toBeGreaterThan(0.95 * total);
    console.log(`vLLM-like closure, --max-layers 40:\n${rows.join('\n')}`);
  });
});
