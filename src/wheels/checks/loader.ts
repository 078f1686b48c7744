import { posix } from 'node:path';
import type { Closure } from '../../nix/types.js';
import { isUserError } from '../../util/errors.js';
import type { ClosureIndex, ReadFile } from './closure-index.js';
import { isLoaderName } from './libraries.js';

/**
 * Whether each glibc of the closure finds its own libraries without help. glibc's loader searches a
 * built-in list of directories (after RPATH, LD_LIBRARY_PATH, RUNPATH and /etc/ld.so.cache), compiled
 * in as NUL-terminated strings: a glibc built by Nix lists its own `lib/`, a distribution's glibc copied
 * into the store (and programs patched to use it) still lists `/lib/x86_64-linux-gnu/`, `/usr/lib/`, …,
 * which the image does not have. A library such as libpthread.so.0 that a wheel needs and the program
 * has not loaded yet is then not found, unless its directory is on LD_LIBRARY_PATH.
 */
export interface GlibcDirs {
  /** Directories holding a loader whose built-in search path does not name them. */
  relocated: string[];
  /** Directories holding a loader that searches them by default (as Nix builds glibc). */
  searched: string[];
}

export async function classifyGlibcDirs(closure: Closure, index: ClosureIndex, readFile: ReadFile): Promise<GlibcDirs> {
  const result: GlibcDirs = { relocated: [], searched: [] };
  for (const dir of index.libraryDirs) {
    const loaders = [...(index.libraries.get(dir) ?? [])].filter(isLoaderName).sort();
    if (loaders.length === 0) continue;
    const storePath = posix.dirname(dir);
    const info = closure.paths.get(storePath);
    if (!info) continue;
    let verdict: boolean | null = null;
    for (const name of loaders) {
      const bytes = await readLoader(() => readFile(info, `${posix.basename(dir)}/${name}`));
      // A symlink (a buildEnv's link to another glibc) tells nothing: the glibc it links to is judged itself.
      if (bytes === null) continue;
      verdict = searchesDir(bytes, dir);
      break;
    }
    if (verdict === true) result.searched.push(dir);
    else if (verdict === false) result.relocated.push(dir);
  }
  return result;
}

/** True when the loader's bytes hold `dir/` or `dir` as a NUL-terminated string (store paths are unique enough). */
export function searchesDir(loader: Buffer, dir: string): boolean {
  return [`${dir}/`, dir].some((form) => loader.includes(Buffer.from(`${form}\0`, 'utf8')));
}

async function readLoader(read: () => Promise<Buffer | null>): Promise<Buffer | null> {
  try {
    return await read();
  } catch (err) {
    // Larger than a loader can be: not one to judge.
    if (isUserError(err)) return null;
    throw err;
  }
}
