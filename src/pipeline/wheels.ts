import pLimit from 'p-limit';
import type { Closure } from '../nix/types.js';
import type { LayerSource } from '../layer/types.js';
import type { ResolvedRecipe } from '../recipe/resolve.js';
import { readWheelInfo, type WheelInfo } from '../wheels/wheel-info.js';
import { checkWheelTags, type TagTarget } from '../wheels/tags.js';
import { SPLIT_THRESHOLD, wheelLayerSource, type SplitFile, type WheelLayer, type WheelLayerPiece } from '../wheels/install.js';
import { recordHash } from '../wheels/record.js';
import type { WheelKeyInputs } from '../cache/keys.js';
import { checkWheels, ElfCollector, inspectClosure, type ClosureIndex, type ImagePython, type ListNodes, type Problem } from '../wheels/checks/index.js';
import type { ElfObject } from '../wheels/checks/elf-collector.js';
import { UserError } from '../util/errors.js';
import type { HashPool } from '../util/hash-pool.js';
import type { UnzipPool } from '../wheels/unzip-pool.js';
import { checkWheelLock, readWheelLock } from '../wheels/lock.js';
import { markerEnvironment } from '../wheels/checks/requirements.js';
import { lockFailed } from './problems.js';
import { readRemembered, type InputMemo } from '../util/file-identity.js';
import { byCodeUnits } from '../util/order.js';
import { DEFAULT_PATH } from '../rootfs/entrypoint.js';
import { normalizeName } from '../wheels/filename.js';
import type { ResolvedRequirements } from '../sbom/facts.js';
import { storePathOf } from '../nix/store-path.js';

/**
 * One layer of a wheel's install: the wheel's main layer, or a giant file of it split off into a layer
 * of its own (see `WheelLayer.pieces`). A wheel gives its main layer's plan, then one per split-off file.
 */
export interface WheelLayerPlan {
  source: LayerSource;
  /** For `inspect`: the wheel's file name; for a split-off file, `<wheel>: <entry in the wheel>`. */
  contents: string[];
  info: WheelInfo;
  /** The wheel's whole install (site-packages, bin, every file); `piece` is this plan's part of it. */
  layer: WheelLayer;
  piece: WheelLayerPiece;
  /** What decides this layer's bytes besides the tar settings: its layer-cache key's inputs. */
  key: WheelKeyInputs;
  /** The image's Python the wheel installs for (part of what decides its layer). */
  python: { interpreter: string; version: string; prefix: string };
  /** The library check's inputs gathered while `source` ran; call once the layer is written. */
  elfFacts(): Promise<WheelElfFacts>;
  /**
   * The facts as a layer cache keeps them: without the wheel's file and, for a split-off file (whose
   * layer other wheels may share), without its entry name; `factsFromCache` puts this plan's back.
   */
  factsForCache(facts: WheelElfFacts): WheelElfFacts;
  factsFromCache(cached: WheelElfFacts): WheelElfFacts;
}

/**
 * What the library check needs from one wheel's layer pass. Plain JSON, so a layer cache can keep it
 * with the layer and skip the pass; `wheel` in each object is the wheel file it was read from.
 */
export interface WheelElfFacts {
  objects: ElfObject[];
  problems: string[];
}

/** The wheels stage: what to install, and — once the layers are written — whether the image can run. */
export interface PreparedWheels {
  layers: WheelLayerPlan[];
  /**
   * Runs the requirement, library and trap checks, given each layer's ELF facts (in `layers` order):
   * every problem found (errors among them mean the image cannot run as built), and the env the wheels need.
   */
  check(facts: WheelElfFacts[]): Promise<WheelChecks>;
}

export interface WheelChecks {
  problems: Problem[];
  env: Record<string, string[]>;
  /** What serves each wheel's requirements in the image, by wheel name: a wheel, a store path, or nothing. */
  served?: ResolvedRequirements;
}

/** The PATH container runtimes use when an image sets none (Docker's and containerd's default). */
export { DEFAULT_PATH };

const PLATFORM_OF_ARCH: Record<string, TagTarget['platform']> = { amd64: 'linux_x86_64', arm64: 'linux_aarch64' };

/**
 * Reads and checks each wheel (zip whole, RECORD, tags for the image's Python) and plans its layers: a
 * main layer, and one per file of at least `splitThreshold` bytes (default SPLIT_THRESHOLD, `--wheel-split-size`).
 * Shared objects are read for the library check in the same pass that
 * writes each layer.
 */
export async function prepareWheels(options: {
  files: string[];
  closure: Closure;
  recipe: ResolvedRecipe;
  python?: string;
  /** false skips the requirements check (`--no-requirements-check`, or the recipe's checks.skipRequirements). */
  depsCheck: boolean;
  /** false makes the library check's findings warnings (`--no-library-check`, or checks.skipLibraries). */
  libraryCheck?: boolean;
  /** A lock file the wheels must match (`--wheel-lock`, or the recipe's wheelLock); checked before installing. */
  lock?: string;
  splitThreshold?: number;
  /** Hashes the wheel files (the build's pool). */
  hashes?: HashPool;
  /** Reads, inflates and checks the wheels' entries as their layers are written (the build's pool). */
  unzip?: UnzipPool;
  /** Lists a store path's files for the closure index (default: from the export; a build passes a cached one). */
  list?: ListNodes;
  /** What was read from each wheel before, by the file's identity: an unchanged wheel is not read again. */
  wheelInfos?: InputMemo<WheelInfo>;
  /** Reads a wheel: a build passes the wheelReader it started before the closure was read. */
  read?: (file: string) => Promise<WheelInfo>;
}): Promise<PreparedWheels> {
  const { files, closure, recipe } = options;
  const splitThreshold = options.splitThreshold;
  // The lock is read first: a mistake in it is told before anything else.
  const lock = options.lock !== undefined ? { file: options.lock, entries: readWheelLock(options.lock) } : null;
  if (files.length === 0 && !lock) return { layers: [], check: async () => ({ problems: [], env: {} }) };

  // The wheels are read (and hashed, on the hash pool) at once, and a build starts on those it knows
  // while the closure is indexed; errors are still reported in order: the closure's first, then each wheel's.
  const reading = files.map(options.read ?? wheelReader(options.hashes, options.wheelInfos));
  const explicitPython = options.python ?? recipe.python.interpreter;
  const { index, python } = await inspectClosure(closure, { python: explicitPython, list: options.list });
  const platform = PLATFORM_OF_ARCH[recipe.architecture ?? 'amd64'];
  if (!platform) throw new UserError(`wheels: images for architecture ${recipe.architecture} cannot take wheels (amd64 and arm64 can)`);

  const target = { pythonVersion: python.version, implementation: 'cp', platform } as const;
  const infos: WheelInfo[] = [];
  for (const [i, file] of files.entries()) {
    const info = await reading[i]!;
    if (!lock) checkWheelTags(info, target);
    if (infos.some((other) => other.name === info.name)) {
      throw new UserError(`${file}: a second wheel of ${info.name} (the first is ${infos.find((o) => o.name === info.name)!.file})`);
    }
    infos.push(info);
  }
  if (lock) {
    // Before anything is installed (or its tags judged): exactly the wheels that were reviewed.
    const machine = recipe.architecture === 'arm64' ? 'aarch64' : 'x86_64';
    const problems = await checkWheelLock({ ...lock, wheels: infos, environment: markerEnvironment(python, machine) });
    if (problems.length > 0) throw lockFailed(problems, lock.file);
    for (const info of infos) checkWheelTags(info, target);
  }
  if (infos.length === 0) return { layers: [], check: async () => ({ problems: [], env: {} }) };

  const install = { prefix: recipe.python.prefix, pythonVersion: python.version, interpreter: python.interpreter };
  const layers = infos.flatMap((info): WheelLayerPlan[] => {
    // One collector per piece, so each layer's facts stand alone (and can be cached with it).
    const collectors = new Map<string, ElfCollector>();
    const layer = wheelLayerSource(info, {
      ...install,
      splitThreshold,
      unzip: options.unzip,
      inspect: ({ path, entry, zip }) => collectors.get(path)!.entry(info.file, entry.name, path, zip),
    });
    const wheelName = wheelFileName(info.file);
    return layer.pieces.map((piece): WheelLayerPlan => {
      const elf = new ElfCollector();
      for (const path of piece.files) collectors.set(path, elf);
      const split = piece.split;
      return {
        source: piece.source,
        contents: [split ? `${wheelName}: ${split.entry.name}` : wheelName],
        info,
        layer,
        piece,
        key: split
          ? { piece: 'file', content: recordHash(split.entry.recordHash!.algorithm, Buffer.from(split.entry.recordHash!.hex, 'hex')), size: split.entry.size, path: split.name, mode: split.mode }
          : { piece: 'main', sha256: info.sha256, fileName: wheelName, ...install, splitThreshold: splitThreshold ?? SPLIT_THRESHOLD },
        python: { interpreter: python.interpreter, version: python.version, prefix: recipe.python.prefix },
        elfFacts: async () => ({ objects: await elf.finish(), problems: [...elf.problems] }),
        factsForCache: (facts) => factsForCache(info, split, facts),
        factsFromCache: (cached) => factsFromCache(info, split, cached),
      };
    });
  });

  return {
    layers,
    check: (facts) =>
      runChecks({
        closure,
        index,
        python,
        recipe,
        infos,
        layers,
        facts,
        depsCheck: options.depsCheck && !recipe.checks.skipRequirements,
        libraryCheck: options.libraryCheck !== false && !recipe.checks.skipLibraries,
      }),
  };
}

/**
 * Wheels read at once. Reading one is mostly this thread's work (its zip directory and RECORD; the
 * hash runs on the pool), so more at once gain nothing, and each holds its directory's buffer and
 * parsed entries alive: read all at once, the ML stack's 42 wheels left some 30 MB of them in the old
 * generation, where they stayed as garbage until the build's end.
 */
const WHEELS_READ_AT_ONCE = 2;

/**
 * Reads each wheel file once however often asked (its zip directory, RECORD, and its sha256 on the hash
 * pool), so a build can start on the wheels it knows before the closure is read. A failure is kept
 * until the reading is awaited: errors are still told in the order of the wheels.
 */
export function wheelReader(hashes?: HashPool, memo?: InputMemo<WheelInfo>): (file: string) => Promise<WheelInfo> {
  const started = new Map<string, Promise<WheelInfo>>();
  const limit = pLimit(WHEELS_READ_AT_ONCE);
  return (file) => {
    let reading = started.get(file);
    if (!reading) {
      reading = limit(() => readRemembered(file, memo, () => readWheelInfo(file, hashes))).then((info) => ({ ...info, file }));
      reading.catch(() => {});
      started.set(file, reading);
    }
    return reading;
  };
}

async function runChecks(o: {
  closure: Closure;
  index: ClosureIndex;
  python: ImagePython;
  recipe: ResolvedRecipe;
  infos: WheelInfo[];
  layers: WheelLayerPlan[];
  facts: WheelElfFacts[];
  depsCheck: boolean;
  libraryCheck: boolean;
}): Promise<WheelChecks> {
  const report = await checkWheels({
    closure: o.closure,
    index: o.index,
    python: o.python,
    wheels: o.infos,
    wheelFiles: o.layers.flatMap((l) => l.piece.files),
    // Sorted as one collector over all wheels would give them, whichever came from a cache.
    elfObjects: o.facts.flatMap((f) => f.objects).sort((a, b) => byCodeUnits(a.wheel, b.wheel) || byCodeUnits(a.entry, b.entry)),
    elfProblems: o.facts.flatMap((f) => f.problems),
    waiveRequirements: o.recipe.checks.waiveRequirements,
    waiveLibraries: o.recipe.checks.waiveLibraries,
    skipTraps: o.recipe.checks.skipTraps,
    env: o.recipe.env,
    depsCheck: o.depsCheck,
    libraryCheck: o.libraryCheck,
    ldLibraryPath: splitPath(o.recipe.env?.LD_LIBRARY_PATH),
    machine: o.recipe.architecture === 'arm64' ? 'aarch64' : 'x86_64',
  });
  const sitePackages = [...new Set(o.layers.map((l) => l.layer.sitePackages))];
  const binDirs = [...new Set(o.layers.map((l) => l.layer.binDir))];
  const env: Record<string, string[]> = { PYTHONPATH: sitePackages, LD_LIBRARY_PATH: report.env.LD_LIBRARY_PATH };
  // Launchers go on PATH after the recipe's entries; an image without PATH gets the runtimes' default too,
  // since a PATH of only the wheels' bin would hide it.
  env.PATH = o.recipe.env?.PATH !== undefined ? binDirs : [...binDirs, ...DEFAULT_PATH.split(':')];
  const served: ResolvedRequirements = new Map(
    [...report.served].map(([name, list]) => [
      normalizeName(name),
      list.map((r) => ({
        requirement: r.requirement,
        served: r.by === null ? null : r.by.wheel ? { wheel: normalizeName(r.by.name) } : storePathServing(r.by.source),
      })),
    ]),
  );
  return { problems: report.problems, env, served };
}

function storePathServing(source: string): { storePath: string } | null {
  const path = storePathOf(source);
  return path === null ? null : { storePath: path };
}

/** Whether `value` has the shape of WheelElfFacts (read from a registry cache, which is not trusted). */
export function isElfFactsList(value: unknown): value is WheelElfFacts {
  const v = value as Partial<WheelElfFacts> | null;
  return (
    typeof v === 'object' && v !== null &&
    Array.isArray(v.problems) && v.problems.every((p) => typeof p === 'string') &&
    Array.isArray(v.objects) && v.objects.every(isElfObject)
  );
}

const isStrings = (v: unknown): v is string[] => Array.isArray(v) && v.every((s) => typeof s === 'string');
const isStringOrNull = (v: unknown) => v === null || typeof v === 'string';

function isElfObject(value: unknown): value is ElfObject {
  const o = value as Partial<ElfObject> | null;
  const f = o?.facts;
  return (
    typeof o === 'object' && o !== null &&
    typeof o.wheel === 'string' && typeof o.entry === 'string' && typeof o.imagePath === 'string' &&
    typeof f === 'object' && f !== null &&
    (f.elfClass === 32 || f.elfClass === 64) && (f.endian === 'little' || f.endian === 'big') &&
    Number.isSafeInteger(f.type) && Number.isSafeInteger(f.machine) && isStringOrNull(f.interpreter) &&
    typeof f.dynamic === 'boolean' && isStringOrNull(f.soname) && isStrings(f.needed) &&
    (f.rpath === null || isStrings(f.rpath)) && (f.runpath === null || isStrings(f.runpath))
  );
}

function factsForCache(info: WheelInfo, split: SplitFile | null, facts: WheelElfFacts): WheelElfFacts {
  // Problems name the wheel and entry first (`<wheel>: <entry>: malformed ELF: …`).
  const label = split ? `${wheelFileName(info.file)}: ${split.entry.name}: ` : '';
  return {
    objects: facts.objects.map((o) => ({ ...o, wheel: '', ...(split && { entry: '' }) })),
    problems: facts.problems.map((p) => (p.startsWith(label) ? p.slice(label.length) : p)),
  };
}

function factsFromCache(info: WheelInfo, split: SplitFile | null, cached: WheelElfFacts): WheelElfFacts {
  const label = split ? `${wheelFileName(info.file)}: ${split.entry.name}: ` : '';
  return {
    objects: cached.objects.map((o) => ({ ...o, wheel: info.file, ...(split && { entry: split.entry.name }) })),
    problems: cached.problems.map((p) => label + p),
  };
}


function splitPath(value: string | undefined): string[] {
  return value ? value.split(':').filter(Boolean) : [];
}


function wheelFileName(file: string): string {
  return file.slice(file.lastIndexOf('/') + 1);
}
