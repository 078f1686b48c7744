import type { NarNode, StorePathInfo } from '../../src/nix/types.js';
import type { NarWalker } from '../../src/rootfs/store-tree.js';
import { byPathComponents } from '../../src/util/order.js';

/** A store path's tree for tests: relative path → what is there. Parent directories are implied. */
export type FakeTree = Record<string, 'dir' | 'file' | 'exec' | { link: string }>;

/**
 * A NarWalker over in-memory trees, visiting nodes in NAR order (depth first, names sorted by bytes)
 * as readNar does. Counts the nodes it hands out, to show where a walk stopped.
 */
export class FakeNars {
  visited = 0;
  readonly #trees = new Map<string, NarNode[]>();

  /** `tree` undefined: the store path is a single file. */
  add(storePath: string, tree: FakeTree | undefined): this {
    if (tree === undefined) {
      this.#trees.set(storePath, [{ type: 'regular', path: '', executable: false, size: 1 }]);
      return this;
    }
    const kinds = new Map<string, FakeTree[string]>([['', 'dir']]);
    for (const [path, kind] of Object.entries(tree)) {
      const parts = path.split('/');
      for (let i = 1; i < parts.length; i++) kinds.set(parts.slice(0, i).join('/'), 'dir');
      kinds.set(path, kind);
    }
    const nodes = [...kinds.entries()]
      .sort(([a], [b]) => (a === '' ? -1 : b === '' ? 1 : byPathComponents(a, b)))
      .map(([path, kind]): NarNode => {
        if (kind === 'dir') return { type: 'directory', path };
        if (kind === 'file' || kind === 'exec') return { type: 'regular', path, executable: kind === 'exec', size: 1 };
        return { type: 'symlink', path, target: kind.link };
      });
    this.#trees.set(storePath, nodes);
    return this;
  }

  readonly walk: NarWalker = async (info: StorePathInfo, visitor) => {
    const nodes = this.#trees.get(info.path);
    if (!nodes) throw new Error(`fake NAR: no tree for ${info.path}`);
    for (const node of nodes) {
      this.visited++;
      if (node.type === 'directory') await visitor.directory(node);
      else if (node.type === 'symlink') await visitor.symlink(node);
      else await visitor.regular(node, (async function* () {})());
    }
  };
}
