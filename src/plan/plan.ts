import { UserError } from '../util/errors.js';
import type { Closure } from '../nix/types.js';
import { nameKey, referenceGraph, type Graph} from './reference-graph.js';
import { sizeAwareLayers } from './size-aware.js';
import { byCodePoints } from '../util/order.js';

/** One layer's store paths. */
export interface LayerPlan {
  paths: string[];
}

export interface PlanOptions {
  /** The image's layer limit (`--max-layers`). */
  maxLayers: number;
  /** Layers the caller adds besides store paths (image root layer, wheel layers); default 0. */
  reserved?: number;
  /**
   * `popularity` (default): nixpkgs' streamLayeredImage. `size-aware`: the largest paths anchor layers and
   * paths used by the same anchors share one (see `sizeAwareLayers`); fewer bytes change between builds.
   */
  strategy?: PlanStrategy;
}

export type PlanStrategy = 'popularity' | 'size-aware';
export const PLAN_STRATEGIES: readonly PlanStrategy[] = ['popularity', 'size-aware'];

/**
 * Splits a closure into layers, as nixpkgs' streamLayeredImage does: store paths ordered by popularity
 * (see `popularityOrder`), the most popular `maxLayers − reserved − 1` each alone in a layer, every other
 * path together in one last layer. When the closure fits, every path is alone.
 *
 * Order of the result: most popular first, so the base of the image's layer stack holds the paths most
 * images share (glibc, …), and the grouped layer of the least popular paths (usually the application
 * and what only it uses) comes last. A layer holding one path depends only on that path, so it has the
 * same digest in every image that holds it alone.
 */
export function planLayers(closure: Closure, options: PlanOptions): LayerPlan[] {
  const reserved = options.reserved ?? 0;
  const budget = options.maxLayers - reserved;
  const strategy = options.strategy ?? 'popularity';
  if (!PLAN_STRATEGIES.includes(strategy)) throw new UserError(`unknown layer strategy "${String(strategy)}" (use ${PLAN_STRATEGIES.join(' or ')})`);
  if (closure.paths.size === 0) return [];
  if (!Number.isInteger(budget) || budget < 1) {
    throw new UserError(`--max-layers ${options.maxLayers} leaves no layer for store paths (${reserved} reserved for the image root and wheels)`);
  }
  if (strategy === 'size-aware') return sizeAwareLayers(closure, budget).map((paths) => ({ paths }));
  const order = popularityOrder(closure);
  if (order.length <= budget) return order.map((path) => ({ paths: [path] }));
  const alone = order.slice(0, budget - 1).map((path) => ({ paths: [path] }));
  return [...alone, { paths: order.slice(budget - 1) }];
}

/**
 * The closure's store paths, most popular first, as nixpkgs' references-by-popularity computes it
 * (pkgs/build-support/references-by-popularity/closure-graph.py): the reference graph is unfolded into
 * a tree from the roots, a path scores 1 for each parent edge and, for each child it is reached through,
 * that child's score for it plus 1; ties are broken by name without the hash, then the hash
 * (`python3-3.11.9-<hash>`).
 *
 * Unlike the Python, the score of each path is counted exactly (it grows exponentially with the depth of
 * diamond-shaped dependencies: BigInt once it passes 2^53), in memory linear in the closure, and a
 * reference cycle, which Nix cannot produce, is an error instead of endless recursion.
 */
export function popularityOrder(closure: Closure): string[] {
  const graph = referenceGraph(closure);
  const scores = popularity(graph);
  const keys = graph.paths.map(nameKey);
  const order = graph.paths.map((_, i) => i);
  order.sort((a, b) => {
    const sa = scores[a]!;
    const sb = scores[b]!;
    if (sa !== sb) return sa > sb ? -1 : 1;
    return byCodePoints(keys[a]!, keys[b]!);
  });
  return order.map((i) => graph.paths[i]!);
}

/**
 * The Python's score without unfolding the tree. Unrolling its recursion gives, for each path x:
 *   score(x) = [x is a root] + (number of roots above x) + Σ over c in {x} ∪ ancestors(x) of in(c)
 * where in(c) is the number of distinct walks from any root down to c (0 for a root). So: one pass in
 * topological order for in(), then per path a walk up its ancestors, summing. Counts are doubles while
 * they stay below 2^53 (exact), BigInts beyond.
 */
function popularity(graph: Graph): bigint[] {
  const n = graph.paths.length;
  const isRoot = graph.parents.map((p) => p.length === 0);
  const walksIn = walksFromRoots(graph, isRoot);
  const seen = new Int32Array(n); // stamped with x + 1 while walking up from x
  const stack: number[] = [];
  const above: number[] = [];
  const scores: bigint[] = new Array(n);

  for (let x = 0; x < n; x++) {
    const stamp = x + 1;
    above.length = 0;
    stack.push(x);
    seen[x] = stamp;
    while (stack.length > 0) {
      const node = stack.pop()!;
      above.push(node);
      for (const parent of graph.parents[node]!) {
        if (seen[parent] === stamp) continue;
        seen[parent] = stamp;
        stack.push(parent);
      }
    }
    let rootsAbove = 0;
    for (const c of above) if (isRoot[c] && c !== x) rootsAbove++;
    const base = (isRoot[x] ? 1 : 0) + rootsAbove;
    if (walksIn.exact) {
      let sum = base;
      for (const c of above) sum += walksIn.exact[c]!;
      if (sum <= Number.MAX_SAFE_INTEGER) {
        scores[x] = BigInt(sum);
        continue;
      }
    }
    const bigWalksIn = walksIn.big();
    let big = BigInt(base);
    for (const c of above) big += bigWalksIn[c]!;
    scores[x] = big;
  }
  return scores;
}

/**
 * in(c) for every path: walks from the roots ending at c. As doubles (`exact`, null if any passed 2^53)
 * and, only when asked, as BigInts.
 */
function walksFromRoots(graph: Graph, isRoot: boolean[]): { exact: Float64Array | null; big: () => bigint[] } {
  const parentsFirst = [...graph.topological].reverse();
  const reach = new Float64Array(graph.paths.length); // walks from roots ending here, the empty walk counted
  const walksIn = new Float64Array(graph.paths.length);
  let exact = true;
  for (const node of parentsFirst) {
    let sum = 0;
    for (const parent of graph.parents[node]!) sum += reach[parent]!;
    walksIn[node] = sum;
    reach[node] = sum + (isRoot[node] ? 1 : 0);
    if (reach[node]! > Number.MAX_SAFE_INTEGER) exact = false;
  }
  let big: bigint[] | null = null;
  return {
    exact: exact ? walksIn : null,
    big: () => {
      if (big) return big;
      const reachBig: bigint[] = new Array(graph.paths.length);
      big = new Array(graph.paths.length);
      for (const node of parentsFirst) {
        let sum = 0n;
        for (const parent of graph.parents[node]!) sum += reachBig[parent]!;
        big[node] = sum;
        reachBig[node] = sum + (isRoot[node] ? 1n : 0n);
      }
      return big;
    },
  };
}
