import { UserError } from '../util/errors.js';
import type { Closure } from '../nix/types.js';
import { byCodePoints } from '../util/order.js';

/** The reference graph by index, self-references dropped, with a children-first (topological) order. */
export interface Graph {
  paths: string[];
  children: number[][];
  parents: number[][];
  /** Children before parents: every path comes after everything it refers to. */
  topological: number[];
}

export function referenceGraph(closure: Closure): Graph {
  const paths = [...closure.paths.keys()].sort(byCodePoints);
  const index = new Map(paths.map((p, i) => [p, i]));
  const children = paths.map((path) => {
    const refs = new Set<number>();
    for (const ref of closure.paths.get(path)!.references) {
      if (ref === path) continue;
      const i = index.get(ref);
      if (i === undefined) throw new Error(`closure is not closed: ${path} refers to ${ref}, which it lacks`);
      refs.add(i);
    }
    return [...refs].sort((a, b) => a - b);
  });
  const parents: number[][] = paths.map(() => []);
  children.forEach((refs, parent) => refs.forEach((child) => parents[child]!.push(parent)));
  return { paths, children, parents, topological: topologicalOrder(paths, children) };
}

/** Depth-first post-order without recursion (closures can be deep); throws on a cycle. */
function topologicalOrder(paths: string[], children: number[][]): number[] {
  const state = new Uint8Array(paths.length); // 0 new, 1 on the stack, 2 done
  const order: number[] = [];
  for (let start = 0; start < paths.length; start++) {
    if (state[start] !== 0) continue;
    const stack: [node: number, next: number][] = [[start, 0]];
    state[start] = 1;
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      const [node, next] = top;
      if (next < children[node]!.length) {
        top[1]++;
        const child = children[node]![next]!;
        if (state[child] === 1) {
          throw new UserError(`the closure has a reference cycle: ${paths[node]} and ${paths[child]} refer to each other`);
        }
        if (state[child] === 0) {
          state[child] = 1;
          stack.push([child, 0]);
        }
      } else {
        state[node] = 2;
        order.push(node);
        stack.pop();
      }
    }
  }
  return order;
}

/** `/nix/store/<hash>-python3-3.11.9` → `python3-3.11.9-/nix/store/<hash>`, the Python's `package_name`. */
export function nameKey(path: string): string {
  const dash = path.indexOf('-');
  return dash < 0 ? path : `${path.slice(dash + 1)}-${path.slice(0, dash)}`;
}

