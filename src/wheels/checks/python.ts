import { UserError } from '../../util/errors.js';
import { storePathName } from '../../nix/store-path.js';
import type { Closure } from '../../nix/types.js';
import type { ClosureIndex, PythonBinary } from './closure-index.js';

/** The image's Python, as found in the closure. */
export interface ImagePython {
  /** The store path providing the interpreter, e.g. `/nix/store/…-python3-3.11.9-env`. */
  storePath: string;
  /** `<storePath>/bin/python3.11` */
  interpreter: string;
  /** `3.11` */
  version: string;
  /** `3.11.9` when the store path's name tells it (nixpkgs' `python3-3.11.9`), else null. */
  fullVersion: string | null;
  /**
   * Every `lib/python3.11/site-packages` of the closure for this version: the interpreter's own
   * first (when it has one), then the others by path.
   */
  sitePackages: string[];
}

/**
 * Finds the interpreter the image runs: the store path providing `bin/python3.X`, or the one named
 * by `--python` (a store path or its `bin/python3.X`). When several store paths provide one, those
 * that another candidate refers to (a python.withPackages env refers to its base python) are set
 * aside; of the rest, the one nearest the closure's roots wins (the image's env, not the Python some
 * ROCm tool's scripts run with, deeper down). A tie is the user's to break: a UserError lists them.
 */
export function findImagePython(closure: Closure, index: ClosureIndex, explicit?: string): ImagePython {
  const chosen = explicit ? explicitPython(closure, index, explicit) : inferPython(closure, index);
  return describe(index, chosen);
}

function explicitPython(closure: Closure, index: ClosureIndex, explicit: string): PythonBinary {
  const path = explicit.replace(/\/+$/, '');
  const byBinary = index.pythons.find((p) => p.binary === path);
  if (byBinary) return byBinary;
  const storePath = path.match(/^\/nix\/store\/[^/]+/)?.[0];
  if (!storePath || !closure.paths.has(storePath)) {
    throw new UserError(`--python ${explicit}: not in the closure`);
  }
  const inPath = index.pythons.filter((p) => p.storePath === storePath);
  if (path === storePath && inPath.length === 1) return inPath[0]!;
  if (inPath.length === 0) throw new UserError(`--python ${explicit}: ${storePath} has no bin/python3.X`);
  throw new UserError(
    `--python ${explicit}: ${storePath} has ${inPath.map((p) => p.binary.slice(storePath.length + 1)).join(', ')}; name one`,
  );
}

function inferPython(closure: Closure, index: ClosureIndex): PythonBinary {
  if (index.pythons.length === 0) {
    throw new UserError('no Python in the closure: no store path has bin/python3.X (give --python PATH)');
  }
  const candidates = index.pythons.filter(
    (p) => !index.pythons.some((other) => other.storePath !== p.storePath && refersTo(closure, other.storePath, p.storePath)),
  );
  if (candidates.length === 1) return candidates[0]!;
  const depth = depthFromRoots(closure);
  const nearest = Math.min(...candidates.map((p) => depth.get(p.storePath) ?? Infinity));
  const tied = candidates.filter((p) => (depth.get(p.storePath) ?? Infinity) === nearest);
  if (tied.length === 1) return tied[0]!;
  const list = tied.map((p) => p.binary).sort().join(', ');
  throw new UserError(`more than one Python in the closure: ${list} (choose one with --python PATH)`);
}

/** Fewest references from a root to each path (roots are 0). */
function depthFromRoots(closure: Closure): Map<string, number> {
  const depth = new Map<string, number>(closure.roots.map((r) => [r, 0]));
  let frontier = [...closure.roots];
  for (let d = 1; frontier.length > 0; d++) {
    const next: string[] = [];
    for (const path of frontier) {
      for (const ref of closure.paths.get(path)?.references ?? []) {
        if (depth.has(ref)) continue;
        depth.set(ref, d);
        next.push(ref);
      }
    }
    frontier = next;
  }
  return depth;
}

/** Whether `to` is in `from`'s closure (following references). */
function refersTo(closure: Closure, from: string, to: string): boolean {
  const seen = new Set<string>();
  const stack = [from];
  while (stack.length > 0) {
    const path = stack.pop()!;
    if (seen.has(path)) continue;
    seen.add(path);
    for (const ref of closure.paths.get(path)?.references ?? []) {
      if (ref === to && path !== to) return true;
      if (!seen.has(ref)) stack.push(ref);
    }
  }
  return false;
}

function describe(index: ClosureIndex, python: PythonBinary): ImagePython {
  const name = storePathName(python.storePath);
  const escaped = python.version.replace('.', '\\.');
  const full = new RegExp(`(?:^|-)(${escaped}\\.\\d+)(?:-|$)`).exec(name);
  const dirs = index.sitePackages.filter((s) => s.version === python.version).map((s) => s.dir);
  const own = `${python.storePath}/lib/python${python.version}/site-packages`;
  const sitePackages = [...new Set(dirs)].sort((a, b) => (a === own ? -1 : b === own ? 1 : a < b ? -1 : a > b ? 1 : 0));
  return {
    storePath: python.storePath,
    interpreter: python.binary,
    version: python.version,
    fullVersion: full ? full[1]! : null,
    sitePackages,
  };
}
