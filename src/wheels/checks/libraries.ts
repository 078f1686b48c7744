import { posix } from 'node:path';
import type { ClosureIndex } from './closure-index.js';
import type { ElfObject } from './elf-collector.js';

/**
 * The shared-library check: every DT_NEEDED of every ELF file the wheels install is resolved the
 * way glibc's loader would find it in the image:
 *
 *  1. DT_RPATH, when the object has no DT_RUNPATH ($ORIGIN is the object's directory in the image);
 *  2. the image's LD_LIBRARY_PATH (the recipe's), then DT_RUNPATH;
 *  3. a library another wheel installs (the loader reuses a library already loaded under that name,
 *     as torch's are once `import torch` ran, so vLLM's extension finds libtorch.so without a path);
 *  4. the closure's library directories (each store path's `lib`, `lib64`): a library found only
 *     there needs its directory on LD_LIBRARY_PATH, which the check returns to add.
 *
 * glibc's own libraries (libc.so.6, libm.so.6, libpthread.so.0, …) must be in a directory holding a
 * loader (`ld-linux*.so*`): the image has no glibc but the closure's. A glibc built by Nix searches its
 * own directory by default, so that directory is not added; one that does not (a distribution's glibc
 * relocated into the store, whose built-in path is /lib/…: `relocatedGlibcDirs`) is added when a
 * wheel's file needs a library from it.
 */

export interface UnresolvedLibrary {
  wheel: string;
  entry: string;
  library: string;
}

export interface LibraryCheckResult {
  unresolved: UnresolvedLibrary[];
  /** Unresolved libraries whose soname the recipe waives (e.g. one the host mounts at run time). */
  waived: UnresolvedLibrary[];
  /** The recipe's LD_LIBRARY_PATH followed by the closure directories the wheels need, in a stable order. */
  ldLibraryPath: string[];
  /** The closure directories added, in the order they appear in `ldLibraryPath`. */
  added: string[];
  /** Things that will not stop the import but deserve a look (foreign machine, missing interpreter). */
  warnings: LibraryWarning[];
}

export interface LibraryWarning {
  wheel: string;
  entry: string;
  /** `bin/tool (torch-….whl) runs with /lib64/ld-linux-x86-64.so.2, which a Nix image does not have` */
  message: string;
  /** Set for an executable whose loader is not in the store. */
  interpreter?: string;
  /** Set for a file built for another machine. */
  machine?: number;
}

/** `vllm/_C.abi3.so needs libamdhip64.so.7: not found` */
export function formatUnresolved(u: UnresolvedLibrary): string {
  return `${u.entry} needs ${u.library}: not found`;
}

const LOADER = /^ld-linux.*\.so/;

/** `ld-linux-x86-64.so.2`, `ld-linux-aarch64.so.1`: glibc's loader. */
export function isLoaderName(name: string): boolean {
  return LOADER.test(name);
}
/** Sonames glibc itself provides. */
const GLIBC_LIBRARY =
  /^(ld-linux[^/]*|lib(c|m|mvec|pthread|dl|rt|util|resolv|nsl|anl|BrokenLocale|thread_db|c_malloc_debug|nss_[a-z]+))\.so(\.\d+)*$/;
const EM_X86_64 = 62;

export function checkLibraries(options: {
  objects: ElfObject[];
  /** Absolute image paths of every file the wheels install. */
  wheelFiles: Iterable<string>;
  index: ClosureIndex;
  /** The recipe's LD_LIBRARY_PATH entries (absolute image paths). */
  ldLibraryPath?: string[];
  /** e_machine the image runs (default x86-64). */
  machine?: number;
  /** Sonames not to report (exact names, e.g. `libamdhip64.so.7`). */
  waive?: string[];
  /** Directories holding a glibc whose loader does not search them by default (see above). */
  relocatedGlibcDirs?: string[];
}): LibraryCheckResult {
  const { index } = options;
  const machine = options.machine ?? EM_X86_64;
  const recipeDirs = options.ldLibraryPath ?? [];

  // Directory → names, for the wheels' files; names held by any wheel (already-loaded rule).
  const wheelDirs = new Map<string, Set<string>>();
  const wheelNames = new Set<string>();
  for (const file of options.wheelFiles) {
    const dir = posix.dirname(file);
    const name = posix.basename(file);
    let names = wheelDirs.get(dir);
    if (!names) wheelDirs.set(dir, (names = new Set()));
    names.add(name);
    wheelNames.add(name);
  }
  const holds = (dir: string, name: string) => Boolean(wheelDirs.get(dir)?.has(name) || index.libraries.get(dir)?.has(name));

  const glibcDirs = index.libraryDirs.filter((dir) => [...(index.libraries.get(dir) ?? [])].some((n) => LOADER.test(n)));
  const relocated = new Set(options.relocatedGlibcDirs ?? []);

  const result: LibraryCheckResult = { unresolved: [], waived: [], ldLibraryPath: [], added: [], warnings: [] };
  const used = new Set<string>();
  const waive = new Set(options.waive ?? []);
  const unresolved = (u: UnresolvedLibrary) => (waive.has(u.library) ? result.waived : result.unresolved).push(u);

  for (const object of options.objects) {
    const { facts } = object;
    if (facts.machine !== machine) {
      result.warnings.push({
        wheel: object.wheel,
        entry: object.entry,
        machine: facts.machine,
        message: `${object.entry} (${baseName(object.wheel)}) is built for ELF machine ${facts.machine}, not ${machine}`,
      });
      continue;
    }
    if (facts.interpreter && !facts.interpreter.startsWith('/nix/store/')) {
      result.warnings.push({
        wheel: object.wheel,
        entry: object.entry,
        interpreter: facts.interpreter,
        message: `${object.entry} (${baseName(object.wheel)}) runs with ${facts.interpreter}, which a Nix image does not have`,
      });
    }
    if (!facts.dynamic) continue;
    const origin = posix.dirname(object.imagePath);
    const expand = (dirs: string[] | null) => (dirs ?? []).map((d) => expandOrigin(d, origin)).filter((d): d is string => d !== null);
    const rpath = facts.runpath === null ? expand(facts.rpath) : [];
    const runpath = expand(facts.runpath);

    for (const library of facts.needed) {
      if (library.includes('/')) {
        const path = posix.isAbsolute(library) ? library : null;
        if (path && holds(posix.dirname(path), posix.basename(path))) continue;
        unresolved({ wheel: object.wheel, entry: object.entry, library });
        continue;
      }
      if ([...rpath, ...recipeDirs, ...runpath].some((dir) => holds(dir, library))) continue;
      if (wheelNames.has(library)) continue;
      if (GLIBC_LIBRARY.test(library)) {
        const serving = glibcDirs.filter((dir) => holds(dir, library));
        for (const dir of serving) if (relocated.has(dir)) used.add(dir);
        if (serving.length > 0) continue;
      }
      const dir = index.libraryDirs.find((d) => holds(d, library));
      if (dir) {
        used.add(dir);
        continue;
      }
      unresolved({ wheel: object.wheel, entry: object.entry, library });
    }
  }

  // Stable: the recipe's order first, then the added directories by path.
  result.added = [...used].filter((d) => !recipeDirs.includes(d)).sort();
  result.ldLibraryPath = [...recipeDirs, ...result.added];
  return result;
}

/** `$ORIGIN/../lib` → `<origin>/../lib`, normalised; other `$VAR`s ($LIB, $PLATFORM) are not expanded. */
function expandOrigin(dir: string, origin: string): string | null {
  const expanded = dir.replace(/\$(ORIGIN|\{ORIGIN\})/g, origin);
  if (expanded.includes('$') || !posix.isAbsolute(expanded)) return null;
  return posix.normalize(expanded);
}

function baseName(file: string): string {
  return file.slice(file.lastIndexOf('/') + 1);
}
