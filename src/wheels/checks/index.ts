import type { Closure } from '../../nix/types.js';
import { listNar, readNarFile } from '../../nix/nar.js';
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
 *   const { index, python } = await inspectClosure(closure, { python: opts.python });
 *   const elf = new ElfCollector();
 *   const layer = wheelLayerSource(info, { …, inspect: ({ path, entry }) => elf.entry(info.file, entry.name, path) });
 *   … write the wheel layers (the collector sees every file in that same pass) …
 *   const report = await checkWheels({ closure, index, python, wheels, wheelFiles: layers.flatMap((l) => l.files),
 *                                      elfObjects: await elf.finish(), elfProblems: elf.problems, … });
 *
 * `report.errors` fail the build (one line each); `report.warnings` are printed;
 * `report.env.LD_LIBRARY_PATH` is the recipe's list followed by the closure directories the wheels need.
 */

export { ElfCollector, type ElfObject, type EntryTap } from './elf-collector.js';
export { indexClosure, mattersToIndex, type ClosureIndex, type ListNodes, type ReadFile } from './closure-index.js';
export { findImagePython, type ImagePython } from './python.js';
export { TRAP_NAMES, type TrapName } from './traps.js';

/** Largest METADATA / PKG-INFO read from the closure. */
const METADATA_LIMIT = 16 << 20;

/** Indexes the closure (one listing pass per store path, contents skipped) and finds the image's Python. */
export async function inspectClosure(
  closure: Closure,
  options: { python?: string; list?: ListNodes } = {},
): Promise<{ index: ClosureIndex; python: ImagePython }> {
  const index = await indexClosure(closure, options.list ?? listNar);
  return { index, python: findImagePython(closure, index, options.python) };
}

export interface CheckWheelsOptions {
  closure: Closure;
  index: ClosureIndex;
  python: ImagePython;
  wheels: WheelInfo[];
  /** Absolute image paths of every file the wheel layers install (`WheelLayer.files`). */
  wheelFiles: Iterable<string>;
  /** From `ElfCollector.finish()`. */
  elfObjects: ElfObject[];
  /** From `ElfCollector.problems`: malformed ELF files, reported as errors. */
  elfProblems?: readonly string[];
  /** Reads a small file of a store path; default `readNarFile` from the export. */
  readFile?: ReadFile;
  /** Distribution names whose unmet requirements only warn (recipe `checks.waiveRequirements`). */
  waiveRequirements?: string[];
  /** Sonames the library check does not fail on (recipe `checks.waiveLibraries`). */
  waiveLibraries?: string[];
  /** false (`--no-deps-check`) skips the requirements check. Default true. */
  depsCheck?: boolean;
  /** The recipe's LD_LIBRARY_PATH entries. */
  ldLibraryPath?: string[];
  /** Trap warnings the recipe turns off (recipe `checks.skipTraps`). */
  skipTraps?: readonly TrapName[];
  /** The image's environment (the recipe's `env`): some traps depend on it (`VLLM_ROCM_USE_AITER`). */
  env?: Record<string, string>;
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
  const wheelFiles = [...options.wheelFiles];
  const readFile = options.readFile ?? ((info, path) => readNarFile(info, path, METADATA_LIMIT));

  const wheelDistributions: Distribution[] = options.wheels.map((w) => ({
    name: w.name,
    version: w.version,
    requiresDist: w.metadata.requiresDist,
    ...(w.metadata.requiresPython !== undefined ? { requiresPython: w.metadata.requiresPython } : {}),
    source: w.file,
    wheel: true,
  }));
  const { distributions: closureDistributions, skipped } = await readClosureDistributions(closure, index, python, readFile);
  for (const source of skipped) warnings.push(`${source}: no Name or Version; not counted as installed`);

  if (options.depsCheck !== false) {
    const { unmet, waived } = checkRequirements({
      wheels: wheelDistributions,
      closureDistributions,
      environment: markerEnvironment(python, options.machine ?? 'x86_64'),
      waive: options.waiveRequirements,
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
    machine: options.machine === 'aarch64' ? EM_AARCH64 : EM_X86_64,
    waive: options.waiveLibraries,
  });
  for (const u of libraries.unresolved) errors.push(`${baseName(u.wheel)}: ${formatUnresolved(u)}`);
  for (const u of libraries.waived) warnings.push(`waived library: ${baseName(u.wheel)}: ${formatUnresolved(u)}`);
  warnings.push(...libraries.warnings);

  const traps = checkTraps({
    index,
    python,
    distributions: [...wheelDistributions, ...closureDistributions],
    wheelFiles,
    env: options.env,
    skip: options.skipTraps,
  });
  warnings.push(...traps.map((t) => t.message));

  return { errors, warnings, env: { LD_LIBRARY_PATH: libraries.ldLibraryPath } };
}

const EM_X86_64 = 62;
const EM_AARCH64 = 183;

function baseName(file: string): string {
  return file.slice(file.lastIndexOf('/') + 1);
}
