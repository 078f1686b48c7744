import { describe, it, expect } from 'vitest';
import { planLayers, popularityOrder } from '../../src/plan/plan.js';
import type { Closure, StorePathInfo } from '../../src/nix/types.js';
import { UserError } from '../../src/util/errors.js';
import { nixBuild, pathInfoJson } from '../helpers/nix.js';
import { tools } from '../helpers/tools.js';

/** `/nix/store/<32 chars>-<name>`; the hash is made from the name unless given. */
function sp(name: string, hash?: string): string {
  return `/nix/store/${(hash ?? name.replace(/[^a-z0-9]/g, '').padEnd(32, '0')).slice(0, 32)}-${name}`;
}

/** A closure from `{ name: [names it refers to] }`. */
function closure(defs: Record<string, string[]>, pathOf: (name: string) => string = (n) => sp(n)): Closure {
  const paths = new Map<string, StorePathInfo>();
  const referenced = new Set<string>();
  for (const [name, refs] of Object.entries(defs)) {
    const references = refs.map(pathOf).sort();
    references.forEach((r) => r !== pathOf(name) && referenced.add(r));
    paths.set(pathOf(name), { path: pathOf(name), references, deriver: null, narHash: '0'.repeat(64), narSize: 0, source: { file: 'x', offset: 0 } });
  }
  const sorted = new Map([...paths].sort(([a], [b]) => (a < b ? -1 : 1)));
  return { paths: sorted, roots: [...sorted.keys()].filter((p) => !referenced.has(p)) };
}

function names(paths: string[]): string[] {
  return paths.map((p) => p.slice('/nix/store/'.length + 33));
}

/**
 * An independent, direct rendering of closure-graph.py's algorithm on small graphs: unfold the graph into
 * its tree of subgraphs from the roots, then count, memoised per path, with exact BigInts.
 */
function referencePopularity(c: Closure): Map<string, bigint> {
  const lookup = new Map([...c.paths].map(([p, info]) => [p, info.references.filter((r) => r !== p)]));
  const roots = [...c.paths.keys()].filter((p) => ![...c.paths.values()].some((i) => i.path !== p && i.references.includes(p)));
  const memo = new Map<string, Map<string, bigint>>();
  const contest = (children: string[]): Map<string, bigint> => {
    const pop = new Map<string, bigint>();
    for (const child of children) {
      pop.set(child, (pop.get(child) ?? 0n) + 1n);
      let sub = memo.get(child);
      if (!sub) memo.set(child, (sub = contest(lookup.get(child)!)));
      for (const [path, n] of sub) pop.set(path, (pop.get(path) ?? 0n) + n + 1n);
    }
    return pop;
  };
  return contest(roots);
}

function referenceOrder(c: Closure): string[] {
  const pop = referencePopularity(c);
  const key = (p: string) => {
    const parts = p.split('-');
    return [...parts.slice(1), parts[0]].join('-');
  };
  return [...pop.keys()].sort((a, b) => (pop.get(a)! !== pop.get(b)! ? (pop.get(a)! > pop.get(b)! ? -1 : 1) : key(a) < key(b) ? -1 : 1));
}

/** The example drawn in closure-graph.py's header comment. */
const nixpkgsExample = {
  A: ['B', 'G'],
  B: ['C', 'E'],
  C: ['D', 'E'],
  D: ['F'],
  E: ['F'],
  F: [],
  G: [],
};

describe('popularityOrder', () => {
  it('orders the example from closure-graph.py as it documents: F E D C B G A', () => {
    expect(names(popularityOrder(closure(nixpkgsExample)))).toEqual(['F', 'E', 'D', 'C', 'B', 'G', 'A']);
    expect(referencePopularity(closure(nixpkgsExample)).get(sp('F'))).toBe(9n);
  });

  it('counts as closure-graph.py’s own contest test does (foo 1, bar 2, baz 4, tux 6), self-references ignored', () => {
    const c = closure({ foo: ['foo', 'bar', 'baz'], bar: ['bar', 'baz'], baz: ['baz', 'tux'], tux: ['tux'] });
    expect(names(popularityOrder(c))).toEqual(['tux', 'baz', 'bar', 'foo']);
    expect([...referencePopularity(c)].map(([p, n]) => [names([p])[0], n])).toEqual(
      expect.arrayContaining([['foo', 1n], ['bar', 2n], ['baz', 4n], ['tux', 6n]]),
    );
  });

  it('breaks ties by name without the hash, then by hash', () => {
    const c = closure({ app: ['zlib', 'acl', 'acl2'], zlib: [], acl: [], acl2: [] }, (n) =>
      n === 'acl2' ? sp('acl', '1'.repeat(32)) : n === 'acl' ? sp('acl', '9'.repeat(32)) : sp(n, n === 'zlib' ? '0'.repeat(32) : 'z'.repeat(32)),
    );
    expect(popularityOrder(c)).toEqual([sp('acl', '1'.repeat(32)), sp('acl', '9'.repeat(32)), sp('zlib', '0'.repeat(32)), sp('app', 'z'.repeat(32))]);
  });

  it('agrees with the reference algorithm on random closures, whatever the map order', () => {
    let seed = 42;
    const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) % n;
    for (let round = 0; round < 20; round++) {
      const size = 5 + rand(40);
      const defs: Record<string, string[]> = {};
      // Refer only to later nodes: a DAG, as every Nix closure is.
      for (let i = 0; i < size; i++) {
        const refs = new Set<string>([`n${i}`]);
        for (let j = i + 1; j < size; j++) if (rand(100) < 15) refs.add(`n${j}`);
        defs[`n${i}`] = [...refs];
      }
      const c = closure(defs);
      const expected = referenceOrder(c);
      expect(popularityOrder(c)).toEqual(expected);
      const shuffled: Closure = { paths: new Map([...c.paths].reverse()), roots: c.roots };
      expect(popularityOrder(shuffled)).toEqual(expected);
    }
  });

  it('counts exactly past 2^53 (80 stacked diamonds), as Python’s integers do', () => {
    const defs: Record<string, string[]> = {};
    for (let i = 0; i < 80; i++) {
      defs[`t${i}`] = [`l${i}`, `r${i}`];
      defs[`l${i}`] = [`t${i + 1}`];
      defs[`r${i}`] = [`t${i + 1}`, `x${i}`];
      defs[`x${i}`] = [];
    }
    defs['t80'] = [];
    const c = closure(defs);
    const pop = referencePopularity(c);
    expect(pop.get(sp('t80'))! > BigInt(Number.MAX_SAFE_INTEGER)).toBe(true);
    expect(popularityOrder(c)).toEqual(referenceOrder(c));
    // The bottom of the stack is reached through 2^80 tree paths and ranks first.
    expect(names(popularityOrder(c))[0]).toBe('t80');
  });

  it('reports a reference cycle as a UserError naming the paths', () => {
    const c = closure({ a: ['b'], b: ['c'], c: ['b'], top: ['a'] });
    expect(() => popularityOrder(c)).toThrow(UserError);
    expect(() => popularityOrder(c)).toThrow(/reference cycle: .*-c and .*-b refer to each other/);
  });
});

/** A base many images share, with an application on top. */
function appClosure(app: string, extra: string[] = []): Closure {
  return closure({
    [app]: ['python3', 'bash', ...extra],
    python3: ['glibc', 'openssl', 'zlib', 'libffi'],
    bash: ['glibc'],
    openssl: ['glibc'],
    zlib: ['glibc'],
    libffi: ['glibc'],
    glibc: ['libidn2', 'libgcc'],
    libidn2: ['libunistring'],
    libunistring: [],
    libgcc: [],
    ...Object.fromEntries(extra.map((e) => [e, ['glibc']])),
  });
}

describe('planLayers', () => {
  it('puts each path alone when the closure fits, most popular first', () => {
    const c = appClosure('app');
    const plan = planLayers(c, { maxLayers: 100, reserved: 1 });
    expect(plan.every((l) => l.paths.length === 1)).toBe(true);
    expect(plan.map((l) => l.paths[0])).toEqual(popularityOrder(c));
    // Depth counts, not only fan-in: what glibc itself needs ranks above glibc.
    expect(names(plan.slice(0, 4).flatMap((l) => l.paths))).toEqual(['libunistring', 'libgcc', 'libidn2', 'glibc']);
    expect(names(plan.at(-1)!.paths)).toEqual(['app']);
  });

  it('keeps within the budget: maxLayers − reserved layers, the rest grouped last', () => {
    const c = appClosure('app', ['e1', 'e2', 'e3']);
    const order = popularityOrder(c);
    for (const [maxLayers, reserved] of [[5, 1], [6, 3], [4, 0], [2, 1]] as const) {
      const plan = planLayers(c, { maxLayers, reserved });
      expect(plan.length).toBe(maxLayers - reserved);
      expect(plan.flatMap((l) => l.paths)).toEqual(order); // every path once, popularity order kept
      expect(plan.slice(0, -1).every((l) => l.paths.length === 1)).toBe(true);
      expect(plan.at(-1)!.paths.length).toBe(order.length - (maxLayers - reserved - 1));
    }
  });

  it('refuses a budget with no room for store paths', () => {
    expect(() => planLayers(appClosure('app'), { maxLayers: 3, reserved: 3 })).toThrow(UserError);
    expect(() => planLayers(appClosure('app'), { maxLayers: 3, reserved: 3 })).toThrow('--max-layers 3 leaves no layer for store paths');
    expect(planLayers(closure({}), { maxLayers: 1, reserved: 1 })).toEqual([]);
  });

  it('gives the shared base the same single-path layers in different images', () => {
    const small = planLayers(appClosure('web-app', ['libxml2']), { maxLayers: 8, reserved: 1 });
    const other = planLayers(appClosure('cli-tool', ['sqlite', 'ncurses', 'readline']), { maxLayers: 8, reserved: 1 });
    const singles = (plan: { paths: string[] }[]) => plan.filter((l) => l.paths.length === 1).map((l) => names(l.paths)[0]);
    for (const base of ['glibc', 'libgcc', 'libidn2', 'libunistring']) {
      expect(singles(small)).toContain(base);
      expect(singles(other)).toContain(base);
    }
  });
});

describe.runIf(tools('nix-build', 'nix'))('planLayers on a real Nix closure', () => {
  it('orders real store paths built with the example’s references as closure-graph.py documents', () => {
    // The graph of closure-graph.py's comment, as real derivations whose outputs refer to each other.
    const [a] = nixBuild(`
      let
        f = mkDrv "F" "echo f > $out";
        g = mkDrv "G" "echo g > $out";
        e = mkDrv "E" "echo \${f} > $out";
        d = mkDrv "D" "echo \${f} > $out";
        c = mkDrv "C" "echo \${d} \${e} > $out";
        b = mkDrv "B" "echo \${c} \${e} > $out";
      in mkDrv "A" "echo \${b} \${g} > $out"`);
    const infos = JSON.parse(pathInfoJson([a!])) as { path: string; references: string[] }[];
    const real: Closure = {
      paths: new Map(
        infos.map((i) => [i.path, { path: i.path, references: i.references, deriver: null, narHash: '', narSize: 0, source: { file: '', offset: 0 } }]),
      ),
      roots: [a!],
    };
    expect(real.paths.size).toBe(7);
    expect(names(popularityOrder(real))).toEqual(['F', 'E', 'D', 'C', 'B', 'G', 'A']);
    const plan = planLayers(real, { maxLayers: 4, reserved: 1 });
    expect(plan.map((l) => names(l.paths))).toEqual([['F'], ['E'], ['D', 'C', 'B', 'G', 'A']]);
  });
});
