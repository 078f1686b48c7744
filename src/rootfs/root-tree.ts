import { posix } from 'node:path';
import type { Owner, TarEntry } from '../layer/types.js';
import { UserError } from '../util/errors.js';
import type { StoreDirectory, StoreTree } from './store-tree.js';
import { byCodePoints } from '../util/order.js';

/**
 * The image root as a tree: entries nix2oci writes itself (directories, /etc files, a few links) and
 * store paths linked in like nixpkgs' buildEnv. A directory only one store path provides becomes one
 * symlink to it; directories several provide (or that hold an entry of our own) become real directories
 * whose entries are linked one by one.
 */
type Node = DirectoryNode | LinkNode | FileNode;

interface DirectoryNode {
  kind: 'directory';
  children: Map<string, Node>;
  /** Store paths that have this directory, in the order they were linked. */
  sources: string[];
  /** Set when the directory must be real: it is ours or holds an entry of ours. */
  mode: number | null;
  /** Its owner when not root (a user's home). */
  owner?: Owner;
}

interface LinkNode {
  kind: 'link';
  target: string;
  /** The store path it links into, or null for a link of our own. */
  source: string | null;
  /** When the store path's entry is itself a symlink: its target and the real directory it is in, to follow it later. */
  symlink?: { target: string; realDir: string };
}

interface FileNode {
  kind: 'file';
  content: Buffer;
  mode: number;
}

/** Where a merge is: the store path being linked, the real directory its entries are in, their path in the root. */
interface MergePoint {
  storePath: string;
  realDir: string;
  prefix: string;
  onCollision: CollisionHandler;
  resolve: DirectoryResolver;
}

/**
 * Follows symlinks through the closure: the directory an absolute path leads to and its real path,
 * or undefined when it is not a directory of the closure.
 */
export type DirectoryResolver = (path: string) => Promise<{ tree: StoreDirectory; realPath: string } | undefined>;

/** Who provides an entry besides store paths: nix2oci itself, the store layers, the layers below (wheels). */
export const GENERATED = 'nix2oci';
export const STORE_LAYERS = 'the store layers';
export const LOWER_LAYERS = 'a lower layer';

export type CollisionHandler = (path: string, kept: string, dropped: string) => void;

const DEFAULT_DIRECTORY_MODE = 0o755;

export class RootTree {
  readonly #root: DirectoryNode = { kind: 'directory', children: new Map(), sources: [], mode: DEFAULT_DIRECTORY_MODE };

  /** A real directory with `mode` (and `owner`, else root), and its missing parents (0755, root). A later call for the same path sets its mode (and owner, if given). */
  addDirectory(path: string, mode: number, owner?: Owner): void {
    const node = this.#makeDirectories(path, mode);
    node.mode = mode;
    if (owner) node.owner = owner;
  }

  /** A file of ours, e.g. /etc/passwd. */
  addFile(path: string, content: Buffer, mode: number): void {
    const { parent, name } = this.#parentOf(path);
    const existing = parent.children.get(name);
    if (existing) throw new UserError(`image root: ${path} is wanted both as a file and as a ${existing.kind}`);
    parent.children.set(name, { kind: 'file', content, mode });
  }

  /** A symlink of ours, e.g. /bin/sh. */
  addSymlink(path: string, target: string): void {
    const { parent, name } = this.#parentOf(path);
    const existing = parent.children.get(name);
    if (existing) throw new UserError(`image root: ${path} is wanted both as a link and as a ${existing.kind}`);
    parent.children.set(name, { kind: 'link', target, source: null });
  }

  /**
   * Whether `path` exists: `present`, `absent`, or `hidden` when one of its parents is a link or file,
   * so the tree cannot tell (and cannot add it).
   */
  lookup(path: string): 'present' | 'absent' | 'hidden' {
    let node: Node = this.#root;
    const parts = splitPath(path);
    for (const [i, part] of parts.entries()) {
      if (node.kind !== 'directory') return 'hidden';
      const child = node.children.get(part);
      if (!child) return 'absent';
      if (i === parts.length - 1) return 'present';
      node = child;
    }
    return 'present';
  }

  /**
   * What the tree holds at `path`, a link not followed: a directory (also one written as a link to the
   * one store path that provides it: its entries are the same), a link with its target, a file of ours,
   * or undefined (nothing, or below a link or file).
   */
  entryAt(path: string): { kind: 'directory' } | { kind: 'link'; target: string } | { kind: 'file'; mode: number } | undefined {
    let node: Node = this.#root;
    for (const part of splitPath(path)) {
      if (node.kind !== 'directory') return undefined;
      const child = node.children.get(part);
      if (!child) return undefined;
      node = child;
    }
    if (node.kind === 'directory') return { kind: 'directory' };
    if (node.kind === 'link') return { kind: 'link', target: node.target };
    return { kind: 'file', mode: node.mode };
  }

  /**
   * Links a store path's entries into the root. An entry that is already there stays (earlier store
   * paths and our own entries win) and `onCollision` hears of it; directories on both sides merge.
   * A symlink to a directory that meets a directory is followed (with `resolveDirectory`) and merged
   * like one, as buildEnv does, so a buildEnv's `etc -> …-cacert/etc` still reaches /etc/ssl.
   * `nix-support` holds build metadata, not files for the root, and is left out as buildEnv does;
   * a top-level `nix` would cover the store itself and is left out too (reported as a collision).
   */
  async linkStorePath(storePath: string, tree: StoreTree, onCollision: CollisionHandler, resolveDirectory?: DirectoryResolver): Promise<void> {
    if (tree.kind !== 'directory') {
      throw new UserError(`copyToRoot: ${storePath} is a single file, not a directory; only a directory's entries can be linked into /`);
    }
    const children = new Map(tree.children);
    children.delete('nix-support');
    if (children.delete('nix')) onCollision('/nix', STORE_LAYERS, storePath);
    const resolve: DirectoryResolver = resolveDirectory ?? (async () => undefined);
    await this.#merge(this.#root, children, { storePath, realDir: storePath, prefix: '', onCollision, resolve });
  }

  /**
   * Keeps `path` fillable by a lower layer (the wheels' prefix): the last layer must not put a link
   * where a lower layer has a directory, or the link would hide it. Directories on the way that store
   * paths provide become real; a store path's file or link on the way is dropped and reported.
   * Adds nothing where no store path provides anything.
   */
  keepForLowerLayers(path: string, onCollision: CollisionHandler): void {
    let node: DirectoryNode = this.#root;
    const parts = splitPath(path);
    for (const [i, part] of parts.entries()) {
      const child = node.children.get(part);
      if (!child) return;
      if (child.kind !== 'directory') {
        node.children.delete(part);
        onCollision(`/${parts.slice(0, i + 1).join('/')}`, LOWER_LAYERS, providerOf(child));
        return;
      }
      child.mode ??= DEFAULT_DIRECTORY_MODE;
      node = child;
    }
  }

  async #merge(into: DirectoryNode, children: Map<string, StoreTree>, at: MergePoint): Promise<void> {
    for (const [name, child] of children) {
      const path = at.prefix === '' ? name : `${at.prefix}/${name}`;
      const realPath = `${at.realDir}/${name}`;
      let existing = into.children.get(name);
      let incoming: StoreTree = child;
      let incomingReal = realPath;

      // A link to a directory meeting a directory (or a link that may be one): follow it, so that both merge.
      const existingIsDirectory = existing?.kind === 'directory' || (existing?.kind === 'link' && existing.symlink !== undefined);
      if (existingIsDirectory && child.kind === 'leaf' && child.target !== undefined) {
        const followed = await at.resolve(absoluteTarget(child.target, at.realDir));
        if (followed) [incoming, incomingReal] = [followed.tree, followed.realPath];
      }
      if (existing?.kind === 'link' && incoming.kind === 'directory') {
        existing = (await this.#expandLink(into, name, existing, path, at.onCollision, at.resolve)) ?? existing;
      }

      if (incoming.kind === 'directory') {
        if (!existing) {
          const node: DirectoryNode = { kind: 'directory', children: new Map(), sources: [at.storePath], mode: null };
          into.children.set(name, node);
          await this.#merge(node, incoming.children, { ...at, realDir: incomingReal, prefix: path });
        } else if (existing.kind === 'directory') {
          existing.sources.push(at.storePath);
          await this.#merge(existing, incoming.children, { ...at, realDir: incomingReal, prefix: path });
        } else {
          at.onCollision(`/${path}`, providerOf(existing), at.storePath);
        }
      } else if (!existing) {
        into.children.set(name, {
          kind: 'link',
          target: `${at.storePath}/${path}`,
          source: at.storePath,
          ...(incoming.target !== undefined && { symlink: { target: incoming.target, realDir: at.realDir } }),
        });
      } else {
        at.onCollision(`/${path}`, providerOf(existing), at.storePath);
      }
    }
  }

  /**
   * Where a store path has a link to a directory at `path` or on the way to it, turns it into a
   * directory of the tree (following the link with `resolve`), so that entries below can be looked up
   * and added. A directory that gets nothing of ours is still written as the one link it was.
   */
  async openLinks(path: string, onCollision: CollisionHandler, resolve: DirectoryResolver): Promise<void> {
    let node: DirectoryNode = this.#root;
    const parts = splitPath(path);
    for (const [i, part] of parts.entries()) {
      let child = node.children.get(part);
      if (child?.kind === 'link') child = await this.#expandLink(node, part, child, parts.slice(0, i + 1).join('/'), onCollision, resolve);
      if (child?.kind !== 'directory') return;
      node = child;
    }
  }

  /** Replaces a store path's link to a directory by a directory holding links to its entries; undefined if it leads to none. */
  async #expandLink(
    parent: DirectoryNode,
    name: string,
    link: LinkNode,
    path: string,
    onCollision: CollisionHandler,
    resolve: DirectoryResolver,
  ): Promise<DirectoryNode | undefined> {
    if (link.symlink === undefined || link.source === null) return undefined;
    const followed = await resolve(absoluteTarget(link.symlink.target, link.symlink.realDir));
    if (!followed) return undefined;
    const expanded: DirectoryNode = { kind: 'directory', children: new Map(), sources: [link.source], mode: null };
    parent.children.set(name, expanded);
    await this.#merge(expanded, followed.tree.children, { storePath: link.source, realDir: followed.realPath, prefix: path, onCollision, resolve });
    return expanded;
  }

  /**
   * The layer's entries: parents before children, siblings in byte order, each path once, so the layer
   * is the same for the same inputs and merges cleanly over the layers below.
   */
  entries(): TarEntry[] {
    const entries: TarEntry[] = [];
    const visit = (directory: DirectoryNode, prefix: string): void => {
      const names = [...directory.children.keys()].sort(byCodePoints);
      for (const name of names) {
        const node = directory.children.get(name)!;
        const path = prefix === '' ? name : `${prefix}/${name}`;
        switch (node.kind) {
          case 'directory':
            if (node.mode === null && node.sources.length === 1) {
              entries.push({ type: 'symlink', name: path, target: `${node.sources[0]}/${path}` });
            } else {
              entries.push({ type: 'directory', name: path, mode: node.mode ?? DEFAULT_DIRECTORY_MODE, ...(node.owner && { owner: node.owner }) });
              visit(node, path);
            }
            break;
          case 'link':
            entries.push({ type: 'symlink', name: path, target: node.target });
            break;
          case 'file':
            entries.push({ type: 'file', name: path, mode: node.mode, size: node.content.length, body: node.content });
            break;
        }
      }
    };
    visit(this.#root, '');
    return entries;
  }

  /** The directory at `path`, created (and every parent made real) as needed. */
  #makeDirectories(path: string, mode: number): DirectoryNode {
    let node = this.#root;
    const parts = splitPath(path);
    for (const [i, part] of parts.entries()) {
      let child = node.children.get(part);
      if (!child) {
        child = { kind: 'directory', children: new Map(), sources: [], mode: i === parts.length - 1 ? mode : DEFAULT_DIRECTORY_MODE };
        node.children.set(part, child);
      }
      if (child.kind !== 'directory') {
        throw new UserError(`image root: /${parts.slice(0, i + 1).join('/')} is wanted both as a directory and as a ${child.kind}`);
      }
      child.mode ??= DEFAULT_DIRECTORY_MODE;
      node = child;
    }
    return node;
  }

  #parentOf(path: string): { parent: DirectoryNode; name: string } {
    const parts = splitPath(path);
    const name = parts.pop();
    if (name === undefined) throw new Error(`image root: no name in "${path}"`);
    const parent = parts.length === 0 ? this.#root : this.#makeDirectories(parts.join('/'), DEFAULT_DIRECTORY_MODE);
    return { parent, name };
  }
}

function providerOf(node: Node): string {
  if (node.kind === 'link' && node.source !== null) return node.source;
  if (node.kind === 'directory' && node.mode === null && node.sources.length > 0) return node.sources[0]!;
  return GENERATED;
}

/** A symlink's target as an absolute path: relative ones are taken from the directory the link is in. */
export function absoluteTarget(target: string, realDir: string): string {
  return posix.normalize(target.startsWith('/') ? target : `${realDir}/${target}`);
}

function splitPath(path: string): string[] {
  return path.split('/').filter((p) => p !== '');
}
