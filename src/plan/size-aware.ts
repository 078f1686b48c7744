import type { Closure } from '../nix/types.js';
import { nameKey, referenceGraph, type Graph} from './reference-graph.js';
import { byCodePoints } from '../util/order.js';

/**
 * Groups a closure's store paths into at most `budget` layers by size, after nixpkgs' auto-layer idea:
 * the largest paths become anchors, one at a time, and every path goes in the layer of the exact set of
 * anchors whose closure holds it. So an anchor shares its layer only with what nothing but it (and the
 * anchors above it) uses, paths used by the same anchors travel together, and paths no anchor reaches
 * (the roots and what only they use) share one layer. Anchors are tried largest first; one that would
 * take the plan past the budget is skipped, and smaller ones are still tried.
 *
 * Why: a layer's bytes change when any of its paths does. Popularity alone leaves the big, rarely shared
 * paths (torch, ROCm) in the one grouped layer with the application, so bumping the application or a
 * small library it uses re-uploads gigabytes; here each big path keeps a layer of its own.
 *
 * Deterministic: ties in size go by name then hash, layers come in a fixed order (see `layerOrder`).
 */
export function sizeAwareLayers(closure: Closure, budget: number): string[][] {
  const graph = referenceGraph(closure);
  const n = graph.paths.length;
  const sizes = graph.paths.map((p) => closure.paths.get(p)!.narSize);
  const keys = graph.paths.map(nameKey);
  const candidates = graph.paths.map((_, i) => i);
  candidates.sort((a, b) => sizes[b]! - sizes[a]! || byCodePoints(keys[a]!, keys[b]!));

  // Each path's group: the anchors reaching it, as a string of anchor numbers in the order they were added.
  let groupOf: string[] = new Array<string>(n).fill('');
  let groups = 1;
  const reach = new Uint8Array(n);
  for (const anchor of candidates) {
    if (groups >= budget) break;
    descendants(graph, anchor, reach);
    const next = groupOf.map((g, i) => (reach[i] ? `${g}${anchor},` : g));
    const count = new Set(next).size;
    if (count > budget) continue;
    groupOf = next;
    groups = count;
  }

  const byGroup = new Map<string, number[]>();
  groupOf.forEach((g, i) => {
    const members = byGroup.get(g);
    if (members) members.push(i);
    else byGroup.set(g, [i]);
  });
  return layerOrder([...byGroup.entries()], sizes).map((members) => members.map((i) => graph.paths[i]!).sort(byCodePoints));
}

/** Marks `reach[i]` for every path in the closure of `start` (itself included). */
function descendants(graph: Graph, start: number, reach: Uint8Array): void {
  reach.fill(0);
  const stack = [start];
  reach[start] = 1;
  while (stack.length > 0) {
    for (const child of graph.children[stack.pop()!]!) {
      if (reach[child]) continue;
      reach[child] = 1;
      stack.push(child);
    }
  }
}

/**
 * Bottom of the stack first: layers used by more anchors (glibc and the like) below those used by fewer,
 * then larger below smaller; the layer no anchor reaches (the application's own) last, as with popularity.
 * Remaining ties by the first path's name.
 */
function layerOrder(groups: [key: string, members: number[]][], sizes: number[]): number[][] {
  const rank = groups.map(([key, members]) => ({
    members,
    anchors: key === '' ? -1 : key.split(',').length - 1,
    size: members.reduce((sum, i) => sum + sizes[i]!, 0),
    first: members.reduce((min, i) => Math.min(min, i), Infinity),
  }));
  rank.sort((a, b) => b.anchors - a.anchors || b.size - a.size || a.first - b.first);
  return rank.map((r) => r.members);
}
