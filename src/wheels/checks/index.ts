import type { Closure } from '../../nix/types.js';
import { listNar, readNarFile } from '../../nix/nar.js';
import type { WheelInfo } from '../wheel-info.js';
import { indexClosure, type ClosureIndex, type ListNodes, type ReadFile } from './closure-index.js';
import type { ElfObject } from './elf-collector.js';
import { checkLibraries, formatUnresolved, type UnresolvedLibrary } from './libraries.js';
import { classifyGlibcDirs } from './loader.js';
import { libraryFix, requirementFix, type Problem } from './problems.js';
import { findImagePython, type ImagePython } from './python.js';
import {
  checkRequirements,
  formatUnmet,
  servingDistributions,
  type ServedRequirement,
  markerEnvironment,
  readClosureDistributions,
  type Distribution,
  type UnmetRequirement,
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
 * `report.problems` holds every problem (errors fail the build), `summarizeProblems` groups them for a
 * reader; `report.env.LD_LIBRARY_PATH` is the recipe's list followed by the closure directories the
 * wheels need.
 */

export { ElfCollector, type ElfObject, type EntryTap } from './elf-collector.js';
export { indexClosure, mattersToIndex, type ClosureIndex, type ListNodes, type ReadFile } from './closure-index.js';
export { findImagePython, type ImagePython } from './python.js';
export { TRAP_NAMES, type TrapName } from './traps.js';
export { formatProblemsFile, summarizeProblems, type Problem, type ProblemCheck, type ProblemKind } from './problems.js';

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
  /** false (`--no-requirements-check`, `--no-deps-check`) skips the requirements check. Default true. */
  depsCheck?: boolean;
  /**
   * false (`--no-library-check`): libraries the image lacks and malformed ELF files are warnings, not
   * errors. The library directories the wheels need still go on LD_LIBRARY_PATH. Default true.
   */
  libraryCheck?: boolean;
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
  /** Every problem, in the order the checks found them. */
  problems: Problem[];
  /** The errors' messages (they fail the build), one line each. */
  errors: string[];
  /** The warnings' messages. */
  warnings: string[];
  env: { LD_LIBRARY_PATH: string[] };
  /** What serves each wheel's requirements in the image, by wheel name (for the SBOM's dependency edges). */
  served: Map<string, ServedRequirement[]>;
}

export async function checkWheels(options: CheckWheelsOptions): Promise<CheckWheelsReport> {
  const { closure, index, python } = options;
  const problems: Problem[] = [];
  const wheelFiles = [...options.wheelFiles];
  const readFile = options.readFile ?? ((info, path) => readNarFile(info, path, METADATA_LIMIT));
  const distributionOf = new Map(options.wheels.map((w) => [w.file, w.name]));
  const aboutWheel = (file: string) => ({ wheel: baseName(file), ...(distributionOf.has(file) && { distribution: distributionOf.get(file)! }) });

  const wheelDistributions: Distribution[] = options.wheels.map((w) => ({
    name: w.name,
    version: w.version,
    requiresDist: w.metadata.requiresDist,
    ...(w.metadata.requiresPython !== undefined ? { requiresPython: w.metadata.requiresPython } : {}),
    source: w.file,
    wheel: true,
  }));
  const { distributions: closureDistributions, skipped } = await readClosureDistributions(closure, index, python, readFile);
  for (const source of skipped) {
    problems.push({ severity: 'warning', check: 'closure', kind: 'unreadable-distribution', message: `${source}: no Name or Version; not counted as installed` });
  }

  if (options.depsCheck !== false) {
    const { unmet, waived } = checkRequirements({
      wheels: wheelDistributions,
      closureDistributions,
      environment: markerEnvironment(python, options.machine ?? 'x86_64'),
      waive: options.waiveRequirements,
    });
    const requirement = (u: UnmetRequirement, waivedOne: boolean): Problem => ({
      severity: waivedOne ? 'warning' : 'error',
      check: 'requirements',
      kind: 'unmet-requirement',
      message: `${waivedOne ? 'waived' : 'unmet'} requirement: ${formatUnmet(u)}`,
      ...(!waivedOne && { fix: requirementFix(u.name, u.found) }),
      ...(waivedOne && { waived: true }),
    });
    for (const u of unmet) problems.push(requirement(u, false));
    for (const u of waived) problems.push(requirement(u, true));
  }

  // With the library check off, what it finds is told but fails nothing; LD_LIBRARY_PATH is still set.
  const libraryCheck = options.libraryCheck !== false;
  const librarySeverity = libraryCheck ? 'error' : 'warning';
  for (const message of options.elfProblems ?? []) {
    problems.push({ severity: librarySeverity, check: 'libraries', kind: 'malformed-elf', message, ...aboutWheel(wheelOfProblem(message, options.wheels)) });
  }
  const glibc = options.elfObjects.length > 0 ? await classifyGlibcDirs(closure, index, readFile) : { relocated: [], searched: [] };
  const libraries = checkLibraries({
    objects: options.elfObjects,
    wheelFiles,
    index,
    ldLibraryPath: options.ldLibraryPath,
    machine: options.machine === 'aarch64' ? EM_AARCH64 : EM_X86_64,
    waive: options.waiveLibraries,
    relocatedGlibcDirs: glibc.relocated,
  });
  const missing = (u: UnresolvedLibrary, waivedOne: boolean): Problem => ({
    severity: waivedOne ? 'warning' : librarySeverity,
    check: 'libraries',
    kind: 'missing-library',
    message: `${waivedOne ? 'waived library: ' : ''}${baseName(u.wheel)}: ${formatUnresolved(u)}`,
    ...(!waivedOne && { fix: libraryFix(u.library) }),
    ...(waivedOne && { waived: true }),
    ...aboutWheel(u.wheel),
    entry: u.entry,
    library: u.library,
  });
  for (const u of libraries.unresolved) problems.push(missing(u, false));
  for (const u of libraries.waived) problems.push(missing(u, true));
  for (const w of libraries.warnings) {
    problems.push({
      severity: 'warning',
      check: 'libraries',
      kind: w.interpreter !== undefined ? 'foreign-interpreter' : 'foreign-machine',
      message: w.message,
      ...aboutWheel(w.wheel),
      entry: w.entry,
      ...(w.interpreter !== undefined && { interpreter: w.interpreter }),
    });
  }
  const relocatedAdded = libraries.added.filter((dir) => glibc.relocated.includes(dir));
  if (relocatedAdded.length > 0 && glibc.searched.length > 0) {
    problems.push({
      severity: 'warning',
      check: 'libraries',
      kind: 'mixed-glibc',
      message: `the closure holds more than one glibc: ${relocatedAdded.join(', ')} (whose loader does not search it by default) goes on LD_LIBRARY_PATH, where programs of ${glibc.searched.join(', ')} will find its libraries too`,
      fix: 'build the image from one glibc',
    });
  }

  const traps = checkTraps({
    index,
    python,
    distributions: [...wheelDistributions, ...closureDistributions],
    wheelFiles,
    env: options.env,
    skip: options.skipTraps,
  });
  for (const t of traps) problems.push({ severity: 'warning', check: 'traps', kind: 'trap', message: t.message });

  return {
    problems,
    errors: problems.filter((p) => p.severity === 'error').map((p) => p.message),
    warnings: problems.filter((p) => p.severity === 'warning').map((p) => p.message),
    env: { LD_LIBRARY_PATH: libraries.ldLibraryPath },
    served: servingDistributions({
      wheels: wheelDistributions,
      closureDistributions,
      environment: markerEnvironment(python, options.machine ?? 'x86_64'),
    }),
  };
}

/** Malformed-ELF problems start with the wheel's file name (`<wheel>: <entry>: malformed ELF: …`). */
function wheelOfProblem(message: string, wheels: WheelInfo[]): string {
  return wheels.find((w) => message.startsWith(`${baseName(w.file)}: `))?.file ?? '';
}

const EM_X86_64 = 62;
const EM_AARCH64 = 183;

function baseName(file: string): string {
  return file.slice(file.lastIndexOf('/') + 1);
}
