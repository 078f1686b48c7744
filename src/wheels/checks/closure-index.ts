import { posix } from 'node:path';
import type { Closure, NarNode, StorePathInfo } from '../../nix/types.js';

/**
 * What the wheel checks need to know about a closure's files, gathered in one pass over each store
 * path's NAR listing (names and types only, no file contents): Python interpreters and their
 * site-packages, the distributions installed there, shared libraries by directory, compilers and
 * Python headers. Only these few kinds of file are kept, so the index stays small for any closure.
 */

/** Lists a store path's nodes in NAR order (`listNar` from src/nix/nar.ts, or a stream of them). */
export type ListNodes = (info: StorePathInfo) => AsyncIterable<NarNode> | Iterable<NarNode> | Promise<Iterable<NarNode>>;

/** Reads one small regular file of a store path; null when there is none (as `readNarFile` does). */
export type ReadFile = (info: StorePathInfo, path: string) => Promise<Buffer | null>;

export interface PythonBinary {
  storePath: string;
  /** Absolute: `/nix/store/…-python3-3.11.9/bin/python3.11`. */
  binary: string;
  /** `3.11` */
  version: string;
}

export interface SitePackagesDir {
  storePath: string;
  /** Absolute: `/nix/store/…/lib/python3.11/site-packages`. */
  dir: string;
  version: string;
}

export interface DistributionFile {
  storePath: string;
  /** Relative to the store path: `lib/python3.11/site-packages/fastapi-0.115.0.dist-info/METADATA`. */
  path: string;
  /** Absolute site-packages directory it lies in. */
  sitePackages: string;
  version: string;
  kind: 'dist-info' | 'egg-info';
}

export interface ClosureIndex {
  pythons: PythonBinary[];
  sitePackages: SitePackagesDir[];
  /** METADATA / PKG-INFO files of distributions lying directly in a site-packages directory. */
  distributionFiles: DistributionFile[];
  /** Importable top-level names (packages, modules, extension modules) per absolute site-packages dir. */
  topLevelNames: Map<string, Set<string>>;
  /** Shared-library-like names (`*.so`, `*.so.*`; files and symlinks) per absolute directory. */
  libraries: Map<string, Set<string>>;
  /** The store paths' own `lib` and `lib64` directories that exist, absolute, sorted. */
  libraryDirs: string[];
  /** Names in each store path's `bin/`, with their absolute paths. */
  binaries: Map<string, string[]>;
  /** `include/python3.X/Python.h` files, absolute, by version. */
  pythonHeaders: { version: string; path: string }[];
}

const PYTHON_BINARY = /^bin\/python(3\.\d+)$/;
const SITE_PACKAGES = /^lib\/python(3\.\d+)\/site-packages$/;
const IN_SITE_PACKAGES = /^lib\/python(3\.\d+)\/site-packages\/([^/]+)(?:\/([^/]+))?$/;
const PYTHON_HEADER = /^include\/python(3\.\d+)\/Python\.h$/;
const SHARED_LIBRARY = /\.so(\.[0-9][^/]*)?$/;

export async function indexClosure(closure: Closure, list: ListNodes): Promise<ClosureIndex> {
  const index: ClosureIndex = {
    pythons: [],
    sitePackages: [],
    distributionFiles: [],
    topLevelNames: new Map(),
    libraries: new Map(),
    libraryDirs: [],
    binaries: new Map(),
    pythonHeaders: [],
  };
  // Listings are fetched several at a time (each is a read of its own), and added in closure order.
  const infos = [...closure.paths.values()];
  const listings: Promise<NarNode[]>[] = [];
  const fetch = (i: number) => {
    const info = infos[i];
    if (!info) return;
    const listing = (async () => {
      const nodes: NarNode[] = [];
      for await (const node of await list(info)) nodes.push(node);
      return nodes;
    })();
    listing.catch(() => {});
    listings[i] = listing;
  };
  for (let i = 0; i < LISTINGS_AHEAD; i++) fetch(i);
  for (const [i, info] of infos.entries()) {
    const nodes = await listings[i]!;
    fetch(i + LISTINGS_AHEAD);
    for (const node of nodes) addNode(index, info.path, node);
  }
  index.libraryDirs.sort();
  return index;
}

const LISTINGS_AHEAD = 8;

/**
 * True for the nodes `indexClosure` takes note of; any other node leaves the index as it is. A cached
 * listing keeps only these (a few per store path instead of every file).
 */
export function mattersToIndex(node: NarNode): boolean {
  const path = node.path;
  return (
    path === 'lib' ||
    path === 'lib64' ||
    (node.type !== 'directory' && SHARED_LIBRARY.test(path)) ||
    (path.startsWith('bin/') && !path.includes('/', 4)) ||
    PYTHON_HEADER.test(path) ||
    SITE_PACKAGES.test(path) ||
    IN_SITE_PACKAGES.test(path)
  );
}

function addNode(index: ClosureIndex, storePath: string, node: NarNode): void {
  const path = node.path;
  const abs = path === '' ? storePath : `${storePath}/${path}`;
  const isDirLike = node.type === 'directory' || node.type === 'symlink';

  if ((path === 'lib' || path === 'lib64') && isDirLike) index.libraryDirs.push(abs);

  if (node.type !== 'directory' && SHARED_LIBRARY.test(path)) {
    const dir = posix.dirname(abs);
    let names = index.libraries.get(dir);
    if (!names) index.libraries.set(dir, (names = new Set()));
    names.add(posix.basename(abs));
  }

  if (path.startsWith('bin/') && !path.includes('/', 4) && node.type !== 'directory') {
    const name = path.slice(4);
    const paths = index.binaries.get(name) ?? [];
    paths.push(abs);
    index.binaries.set(name, paths);
    const python = PYTHON_BINARY.exec(path);
    if (python) index.pythons.push({ storePath, binary: abs, version: python[1]! });
    return;
  }

  const header = PYTHON_HEADER.exec(path);
  if (header && node.type !== 'directory') {
    index.pythonHeaders.push({ version: header[1]!, path: abs });
    return;
  }

  const site = SITE_PACKAGES.exec(path);
  if (site && isDirLike) {
    index.sitePackages.push({ storePath, dir: abs, version: site[1]! });
    return;
  }

  const inSite = IN_SITE_PACKAGES.exec(path);
  if (!inSite) return;
  const [, version, top, inner] = inSite as unknown as [string, string, string, string | undefined];
  const siteDir = `${storePath}/lib/python${version}/site-packages`;
  if (inner === undefined) {
    // A direct child of site-packages: a package, a module, or a distribution's metadata.
    const importable = /^([A-Za-z_][A-Za-z0-9_]*)(?:\.py|\.[^/]*\.so|\.so)?$/.exec(top);
    if (importable && (node.type !== 'regular' || top !== importable[1])) {
      let names = index.topLevelNames.get(siteDir);
      if (!names) index.topLevelNames.set(siteDir, (names = new Set()));
      names.add(importable[1]!);
    }
    if (top.endsWith('.egg-info') && node.type === 'regular') {
      index.distributionFiles.push({ storePath, path, sitePackages: siteDir, version, kind: 'egg-info' });
    }
    return;
  }
  if (node.type !== 'regular') return;
  if (top.endsWith('.dist-info') && inner === 'METADATA') {
    index.distributionFiles.push({ storePath, path, sitePackages: siteDir, version, kind: 'dist-info' });
  } else if (top.endsWith('.egg-info') && inner === 'PKG-INFO') {
    index.distributionFiles.push({ storePath, path, sitePackages: siteDir, version, kind: 'egg-info' });
  }
}
