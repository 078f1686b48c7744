import { readNar } from '../nix/nar.js';
import type { NarNode, NarVisitor, StorePathInfo } from '../nix/types.js';
import { byPathComponents } from '../util/order.js';

/** Drives a visitor over a store path's NAR; `readNar` in production, a fake tree in unit tests. */
export type NarWalker = (info: StorePathInfo, visitor: NarVisitor) => Promise<void>;

/** Listing reads headers only: contents are skipped, so small reads waste least. */
const LIST_CHUNK = 64 << 10;

export const readNarForListing: NarWalker = (info, visitor) => readNar(info, visitor, { chunkSize: LIST_CHUNK });

/** A store path's tree: names, kinds and symlink targets (`target` is set only on symlinks; `executable` on files). */
export type StoreTree = StoreDirectory | { kind: 'leaf'; target?: string; executable?: boolean };
export interface StoreDirectory {
  kind: 'directory';
  children: Map<string, StoreTree>;
}

/**
 * The tree of a store path. Regular files are not read (the visitor skips their contents), so this
 * costs the NAR's headers, not its size.
 */
export async function listStoreTree(info: StorePathInfo, walk: NarWalker): Promise<StoreTree> {
  let root: StoreTree | undefined;
  const directories = new Map<string, Map<string, StoreTree>>();
  const place = (node: NarNode, tree: StoreTree): void => {
    if (node.path === '') {
      root = tree;
      return;
    }
    const slash = node.path.lastIndexOf('/');
    const parent = directories.get(slash < 0 ? '' : node.path.slice(0, slash));
    // NAR order puts a directory before its entries, so the parent is always known.
    parent?.set(node.path.slice(slash + 1), tree);
  };
  await walk(info, {
    directory: (node) => {
      const children = new Map<string, StoreTree>();
      directories.set(node.path, children);
      place(node, { kind: 'directory', children });
    },
    regular: (node) => place(node, { kind: 'leaf', executable: node.executable }),
    symlink: (node) => place(node, { kind: 'leaf', target: node.target }),
  });
  return root ?? { kind: 'leaf' };
}

/** Thrown through the walker to stop reading a NAR once the wanted entries are behind. */
class StopWalking extends Error {}

/**
 * Which of `wanted` (paths such as `bin/sh`, all below one top-level directory) the store path has as a
 * file or symlink. Reading stops once the NAR, which is sorted, has passed that directory, so a large
 * store path costs only the entries before it.
 */
export async function findEntries(info: StorePathInfo, wanted: readonly string[], walk: NarWalker): Promise<Set<string>> {
  const found = new Set<string>();
  const last = [...wanted].sort(byPathComponents).at(-1) ?? '';
  // NAR order is byPathComponents order: once a node sorts after the last wanted path, none can follow.
  const stopPast = (node: NarNode): void => {
    if (byPathComponents(node.path, last) > 0) throw new StopWalking();
  };
  const check = (node: NarNode): void => {
    stopPast(node);
    if (wanted.includes(node.path)) found.add(node.path);
  };
  try {
    await walk(info, { directory: stopPast, regular: check, symlink: check });
  } catch (error) {
    if (!(error instanceof StopWalking)) throw error;
  }
  return found;
}
