import type { Closure } from '../../nix/types.js';
import type { WheelInfo } from '../wheel-info.js';
import { indexClosure, type ClosureIndex, type ListNodes, type ReadFile } from './closure-index.js';
import type { ElfObject } from './elf-collector.js';
import { checkLibraries, formatUnresolved } from './libraries.js';
import { findImagePython, type ImagePython } from './python.js';
import {
  checkRequirements,
  formatUnmet,
  markerEnvironment,
  readClosureDistributions,
  type Distribution,
} from './requirements.js';
import { checkTraps, type TrapName } from './traps.js';

/**
 * The wheel checks, for the build: what the image's Python is, whether the wheels' requirements are
 * met, whether their shared libraries resolve, and the known traps. Used in three steps:
 *
 *   const { index, python } = await inspectClosure(closure, { list: listNar, python: opts.python });
 *   const elf = new ElfCollector();            // the installer taps each wheel entry through it
 *   … install the wheels into python.sitePackages[0] …
 *   const report = await checkWheels({ closure, index, python, wheels, elfObjects: await elf.finish(),
 *                                      elfProblems: elf.problems, readFile: readNarFile, … });
 *
 * `report.errors` fail the build (one line each); `report.warnings` are printed;
 * `report.env.LD_LIBRARY_PATH` is the recipe's list followed by the closure directories the wheels need.
 */

export { ElfCollector, type ElfObject, type EntryTap } from './elf-collector.js';
export { indexClosure, type ClosureIndex, type ListNodes, type ReadFile } from './closure-index.js';
export { findImagePython, type ImagePython } from './python.js';
export type { TrapName } from './traps.js';

/** Indexes the closure (one listing pass per store path) and finds the image's Python. */
export async function inspectClosure(
  closure: Closure,
  options: { list: ListNodes; python?: string },
): Promise<{ index: ClosureIndex; python: ImagePython }> {
  const index = await indexClosure(closure, options.list);
  return { index, python: findImagePython(closure, index, options.python) };
}

export interface CheckWheelsOptions {
  closure: Closure;
  index: ClosureIndex;
  python: ImagePython;
  wheels: WheelInfo[];
  /** From `ElfCollector.finish()`. */
  elfObjects: ElfObject[];
  /** From `ElfCollector.problems`: malformed ELF files, reported as errors. */
  elfProblems?: readonly string[];
  /** Reads a small file of a store path (METADATA of the closure's distributions). */
  readFile: ReadFile;
  /** Where a wheel entry lands in the image; default {@link defaultImagePath} under `python.sitePackages[0]`. */
  imagePathOf?: (wheel: WheelInfo, entry: string) => string | null;
  /** Requirement names the recipe waives. */
  waive?: string[];
  /** false (`--no-deps-check`) skips the requirements check. Default true. */
  depsCheck?: boolean;
  /** The recipe's LD_LIBRARY_PATH entries. */
  ldLibraryPath?: string[];
  /** Trap warnings the recipe turns off. */
  skipTraps?: TrapName[];
  /** Machine the image runs, as uname -m says (default x86_64). */
  machine?: 'x86_64' | 'aarch64';
}

export interface CheckWheelsReport {
  errors: string[];
  warnings: string[];
  env: { LD_LIBRARY_PATH: string[] };
}

export async function checkWheels(options: CheckWheelsOptions): Promise<CheckWheelsReport> {
  const { closure, index, python } = options;
  const errors: string[] = [];
  const warnings: string[] = [];
  const imagePathOf = options.imagePathOf ?? ((wheel: WheelInfo, entry: string) => defaultImagePath(python, wheel, entry));
  const wheelFiles: string[] = [];
  for (const wheel of options.wheels) {
    for (const entry of wheel.entries) {
      if (entry.isDir) continue;
      const path = imagePathOf(wheel, entry.name);
      if (path) wheelFiles.push(path);
    }
  }

  const wheelDistributions: Distribution[] = options.wheels.map((w) => ({
    name: w.name,
    version: w.version,
    requiresDist: w.metadata.requiresDist,
    ...(w.metadata.requiresPython !== undefined ? { requiresPython: w.metadata.requiresPython } : {}),
    source: w.file,
    wheel: true,
  }));
  const { distributions: closureDistributions, skipped } = await readClosureDistributions(closure, index, python, options.readFile);
  for (const source of skipped) warnings.push(`${source}: no Name or Version; not counted as installed`);

  if (options.depsCheck !== false) {
    const { unmet, waived } = checkRequirements({
      wheels: wheelDistributions,
      closureDistributions,
      environment: markerEnvironment(python, options.machine ?? 'x86_64'),
      waive: options.waive,
    });
    for (const u of unmet) errors.push(`unmet requirement: ${formatUnmet(u)}`);
    for (const u of waived) warnings.push(`waived requirement: ${formatUnmet(u)}`);
  }

  errors.push(...(options.elfProblems ?? []));
  const libraries = checkLibraries({
    objects: options.elfObjects,
    wheelFiles,
    index,
    ldLibraryPath: options.ldLibraryPath,
    machine: options.machine === 'aarch64' ? 183 : 62,
  });
  for (const u of libraries.unresolved) errors.push(`${baseName(u.wheel)}: ${formatUnresolved(u)}`);
  warnings.push(...libraries.warnings);

  const traps = checkTraps({
    index,
    python,
    distributions: [...wheelDistributions, ...closureDistributions],
    wheelFiles,
    skip: options.skipTraps,
  });
  warnings.push(...traps.map((t) => t.message));

  return { errors, warnings, env: { LD_LIBRARY_PATH: libraries.ldLibraryPath } };
}

/**
 * Where pip puts a wheel's entry for a prefix whose site-packages is `python.sitePackages[0]`:
 * `.data/purelib|platlib` into site-packages, `scripts` into `<prefix>/bin`, `headers` into
 * `<prefix>/include/python3.X/<name>`, `data` into the prefix; everything else into site-packages.
 */
export function defaultImagePath(python: ImagePython, wheel: WheelInfo, entry: string, sitePackages = python.sitePackages[0]): string | null {
  if (!sitePackages) return null;
  const prefix = sitePackages.replace(/\/lib\/python3\.\d+\/site-packages$/, '');
  const data = `${wheel.dataDir}/`;
  if (!entry.startsWith(data)) return `${sitePackages}/${entry}`;
  const [scheme, ...rest] = entry.slice(data.length).split('/');
  const tail = rest.join('/');
  switch (scheme) {
    case 'purelib':
    case 'platlib':
      return `${sitePackages}/${tail}`;
    case 'scripts':
      return `${prefix}/bin/${tail}`;
    case 'headers':
      return `${prefix}/include/python${python.version}/${wheel.name}/${tail}`;
    case 'data':
      return `${prefix}/${tail}`;
    default:
      return null;
  }
}

function baseName(file: string): string {
  return file.slice(file.lastIndexOf('/') + 1);
}
