import type { Closure, NarNode, StorePathInfo } from '../nix/types.js';
import { UserError } from '../util/errors.js';
import { byCodeUnits } from '../util/order.js';
import { formatBytes } from '../util/units.js';
import type { LayerPlan } from './plan.js';

/**
 * `--max-layer-size`: no layer blob larger than the cap. A blob's size is known only once compressed,
 * so layers are planned by their tar's size, which bounds the blob's: compression never grows a tar by
 * more than a few bytes per block (stored deflate blocks, raw zstd blocks), and MARGIN leaves room for
 * that. A planned layer over the cap is cut: its store paths fill layers one after the other, in name
 * order, and a store path that alone is over the cap is split into slices at file boundaries (files
 * are never split). A slice depends only on its store path and the cap, so it has the same digest in
 * every image. What cannot fit (one file larger than the cap once compressed) is found after
 * compressing, by `checkLayerSizes`.
 */

/** One layer after the cap: store paths whole, or one slice of one store path. */
export type CappedLayer = { paths: string[]; slice?: undefined } | { paths: [string]; slice: StorePathSlice };

/** A run of a store path's NAR nodes (in NAR order), the directories above the first one added. */
export interface StorePathSlice {
  /** 1-based, of `count`. */
  index: number;
  count: number;
  /** NAR node indices: `from` to `to` (exclusive). */
  from: number;
  to: number;
  /** The slice's one regular file when it holds a single file (named when it will not fit). */
  onlyFile?: { path: string; size: number };
}

/** Room for compression's own bytes: 1/1000 of the cap and 64 KiB for headers and the layer's ends. */
function tarLimit(cap: number): number {
  return Math.floor(cap * 0.999) - (64 << 10);
}

/** The most tar bytes a node's entry takes: header, a PAX header when a name is long, the padded body. */
function entryBound(node: NarNode, root: string): number {
  const name = node.path === '' ? root : `${root}/${node.path}`;
  const long = Buffer.byteLength(name) > 99 || (node.type === 'symlink' && Buffer.byteLength(node.target) > 99);
  const pax = long ? 1024 + Math.ceil((Buffer.byteLength(name) + (node.type === 'symlink' ? Buffer.byteLength(node.target) : 0)) / 512) * 512 : 0;
  const body = node.type === 'regular' ? Math.ceil(node.size / 512) * 512 : 0;
  return 512 + pax + body;
}

/** The layers of a plan under the cap. `list` gives a store path's NAR nodes (listNar, or a cached listing). */
export async function capLayers(plan: LayerPlan[], closure: Closure, cap: number, list: (info: StorePathInfo) => Promise<NarNode[]>): Promise<CappedLayer[]> {
  const limit = tarLimit(cap);
  if (limit < 4096) throw new UserError(`--max-layer-size ${formatBytes(cap)} is too small: a layer needs at least 68 KiB`);
  // A quick bound first: a NAR spends at least ~200 bytes per node, a tar at most ~1.5 KiB more than the
  // body (header, padding, a PAX header for a long name). Paths of a group it cannot settle are listed.
  const quickBound = (path: string) => closure.paths.get(path)!.narSize * 16 + 4096;
  const exact = new Map<string, number>();
  const boundOf = async (path: string): Promise<number> => {
    let bound = exact.get(path);
    if (bound === undefined) {
      bound = pathBound(await list(closure.paths.get(path)!), path.slice(1));
      exact.set(path, bound);
    }
    return bound;
  };
  const out: CappedLayer[] = [];
  for (const group of plan) {
    const paths = [...group.paths].sort(byCodeUnits);
    let total = paths.reduce((sum, path) => sum + quickBound(path), 0);
    if (total > limit) {
      total = 0;
      for (const path of paths) total += await boundOf(path);
    }
    if (total <= limit) {
      out.push({ paths: group.paths });
      continue;
    }
    let filling: string[] = [];
    let filled = 0;
    for (const path of paths) {
      const bound = await boundOf(path);
      if (bound > limit) {
        const info = closure.paths.get(path)!;
        for (const slice of splitStorePath(await list(info), path.slice(1), limit)) out.push({ paths: [path], slice });
        continue;
      }
      if (filled + bound > limit) {
        out.push({ paths: filling });
        filling = [];
        filled = 0;
      }
      filling.push(path);
      filled += bound;
    }
    if (filling.length > 0) out.push({ paths: filling });
  }
  return out;
}

function pathBound(nodes: NarNode[], root: string): number {
  return nodes.reduce((sum, node) => sum + entryBound(node, root), 0);
}

/**
 * A store path's NAR nodes cut into slices of at most `limit` tar bytes, in NAR order. Each slice repeats
 * the directories above its first node, with the same modes, so every layer's tree is whole and the
 * image's files are the same as with the path in one layer. A node larger than the limit is a slice alone.
 */
export function splitStorePath(nodes: NarNode[], root: string, limit: number): StorePathSlice[] {
  const ranges: { from: number; to: number }[] = [];
  let from = 0;
  let used = 0;
  const dirs: string[] = []; // the directories above the current node, outermost first
  const aboveBound = (at: number) => {
    const path = nodes[at]!.path;
    return dirs.filter((d) => d === '' || path.startsWith(`${d}/`)).reduce((sum, d) => sum + entryBound({ type: 'directory', path: d }, root), 0);
  };
  for (let i = 0; i < nodes.length; i++) {
    const node = nodes[i]!;
    while (dirs.length > 0 && !(dirs[dirs.length - 1] === '' || node.path.startsWith(`${dirs[dirs.length - 1]}/`))) dirs.pop();
    const bound = entryBound(node, root);
    if (i > from && used + bound > limit) {
      ranges.push({ from, to: i });
      from = i;
      used = aboveBound(i);
    }
    used += bound;
    if (node.type === 'directory') dirs.push(node.path);
  }
  ranges.push({ from, to: nodes.length });
  return ranges.map(({ from, to }, i) => {
    const files = nodes.slice(from, to).filter((n) => n.type === 'regular');
    const only = files.length === 1 ? files[0]! : undefined;
    return { index: i + 1, count: ranges.length, from, to, ...(only && { onlyFile: { path: only.path, size: only.size } }) };
  });
}

/** The one-line label of a slice: `torch-2.5 (slice 2 of 5)`. */
export function sliceLabel(name: string, slice: StorePathSlice): string {
  return `${name} (slice ${slice.index} of ${slice.count})`;
}

/**
 * After compressing: every blob within the cap, or a one-line error naming what does not fit. A slice of
 * one file over the cap names the file: files are never split, so only a larger cap can hold it.
 */
export function checkLayerSize(cap: number, size: number, what: { contents: string[]; slice?: StorePathSlice }): void {
  if (size <= cap) return;
  const only = what.slice?.onlyFile;
  if (only) {
    throw new UserError(
      `--max-layer-size ${formatBytes(cap)}: ${what.contents[0]}/${only.path} is ${formatBytes(only.size)} (${formatBytes(size)} compressed), larger than the cap; files are not split, so raise the cap`,
    );
  }
  const holds = what.contents.length > 3 ? `${what.contents.slice(0, 3).join(', ')} and ${what.contents.length - 3} more` : what.contents.join(', ');
  throw new UserError(`--max-layer-size ${formatBytes(cap)}: the layer of ${holds} is ${formatBytes(size)} compressed, larger than the cap`);
}
