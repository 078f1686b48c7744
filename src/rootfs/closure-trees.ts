import type { Closure } from '../nix/types.js';
import type { DirectoryResolver } from './root-tree.js';
import { absoluteTarget } from './root-tree.js';
import { listStoreTree, type NarWalker, type StoreDirectory, type StoreTree } from './store-tree.js';

/** Symlink chains longer than this are loops or mistakes; Linux's own limit is 40. */
const MAX_LINK_HOPS = 40;

/** Store path trees of a closure, each listed once when first needed. */
export class ClosureTrees {
  readonly #listed = new Map<string, Promise<StoreTree>>();

  constructor(
    private readonly closure: Closure,
    private readonly walk: NarWalker,
  ) {}

  /** The tree of a store path of the closure. */
  tree(storePath: string): Promise<StoreTree> {
    let listed = this.#listed.get(storePath);
    if (!listed) {
      const info = this.closure.paths.get(storePath);
      if (!info) throw new Error(`ClosureTrees: ${storePath} is not in the closure`);
      listed = listStoreTree(info, this.walk);
      this.#listed.set(storePath, listed);
    }
    return listed;
  }

  /** Follows `path` through symlinks in the closure's store paths to a directory, if it leads to one. */
  readonly resolveDirectory: DirectoryResolver = async (path) => {
    let remaining = path;
    for (let hop = 0; hop < MAX_LINK_HOPS; hop++) {
      const storePath = /^\/nix\/store\/[^/]+/.exec(remaining)?.[0];
      if (storePath === undefined || !this.closure.paths.has(storePath)) return undefined;
      const parts = remaining.slice(storePath.length).split('/').filter(Boolean);
      let node = await this.tree(storePath);
      let real = storePath;
      let followed = false;
      for (const [i, part] of parts.entries()) {
        if (node.kind !== 'directory') return undefined;
        const child = node.children.get(part);
        if (!child) return undefined;
        if (child.kind === 'leaf' && child.target !== undefined) {
          remaining = [absoluteTarget(child.target, real), ...parts.slice(i + 1)].join('/');
          followed = true;
          break;
        }
        node = child;
        real = `${real}/${part}`;
      }
      if (!followed) return node.kind === 'directory' ? { tree: node as StoreDirectory, realPath: real } : undefined;
    }
    return undefined;
  };
}
