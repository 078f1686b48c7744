import type { Closure } from '../nix/types.js';
import type { LayerSource } from '../layer/types.js';
import type { ResolvedRecipe } from '../recipe/resolve.js';
import { readWheelInfo, type WheelInfo } from '../wheels/wheel-info.js';
import { checkWheelTags, type TagTarget } from '../wheels/tags.js';
import { SPLIT_THRESHOLD, wheelLayerSource, type SplitFile, type WheelLayer, type WheelLayerPiece } from '../wheels/install.js';
import { recordHash } from '../wheels/record.js';
import type { WheelKeyInputs } from '../cache/keys.js';
import { checkWheels, ElfCollector, inspectClosure, type ClosureIndex, type ImagePython, type ListNodes } from '../wheels/checks/index.js';
import type { ElfObject } from '../wheels/checks/elf-collector.js';
import { UserError } from '../util/errors.js';
import { readRemembered, type InputMemo } from '../util/file-identity.js';
import { DEFAULT_PATH } from '../rootfs/entrypoint.js';

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
  /** Runs the requirement, library and trap checks, given each layer's ELF facts (in `layers` order). */
  check(facts: WheelElfFacts[]): Promise<{ warnings: string[]; env: Record<string, string[]> }>;
}

/** The PATH container runtimes use when an image sets none (Docker's and containerd's default). */
export { DEFAULT_PATH };

const PLATFORM_OF_ARCH: Record<string, TagTarget['platform']> = { amd64: 'linux_x86_64', arm64: 'linux_aarch64' };

/** Overrides the split threshold (bytes) of wheel installs; for tests with small files. */
export const SPLIT_THRESHOLD_ENV = 'NIX2OCI_WHEEL_SPLIT_THRESHOLD';

/**
 * Reads and checks each wheel (zip whole, RECORD, tags for the image's Python) and plans its layers: a
 * main layer, and one per file of at least `splitThreshold` bytes (default SPLIT_THRESHOLD, or
 * $NIX2OCI_WHEEL_SPLIT_THRESHOLD). Shared objects are read for the library check in the same pass that
 * writes each layer.
 */
export async function prepareWheels(options: {
  files: string[];
  closure: Closure;
  recipe: ResolvedRecipe;
  python?: string;
  depsCheck: boolean;
  splitThreshold?: number;
  /** Lists a store path's files for the closure index (default: from the export; a build passes a cached one). */
  list?: ListNodes;
  /** What was read from each wheel before, by the file's identity: an unchanged wheel is not read again. */
  wheelInfos?: InputMemo<WheelInfo>;
}): Promise<PreparedWheels> {
  const { files, closure, recipe } = options;
  const splitThreshold = options.splitThreshold ?? thresholdFromEnv();
  if (files.length === 0) return { layers: [], check: async () => ({ warnings: [], env: {} }) };

  // The wheels are read (and hashed, on the hash pool) while the closure is indexed; errors are still
  // reported in order: the closure's first, then each wheel's.
  const reading = files.map((file) =>
    readRemembered(file, options.wheelInfos, () => readWheelInfo(file)).then((info) => ({ ...info, file })),
  );
  for (const r of reading) r.catch(() => {});
  const explicitPython = options.python ?? recipe.python.interpreter;
  const { index, python } = await inspectClosure(closure, { python: explicitPython, list: options.list });
  const platform = PLATFORM_OF_ARCH[recipe.architecture ?? 'amd64'];
  if (!platform) throw new UserError(`wheels: images for architecture ${recipe.architecture} cannot take wheels (amd64 and arm64 can)`);

  const infos: WheelInfo[] = [];
  for (const [i, file] of files.entries()) {
    const info = await reading[i]!;
    checkWheelTags(info, { pythonVersion: python.version, implementation: 'cp', platform });
    if (infos.some((other) => other.name === info.name)) {
      throw new UserError(`${file}: a second wheel of ${info.name} (the first is ${infos.find((o) => o.name === info.name)!.file})`);
    }
    infos.push(info);
  }

  const target = { prefix: recipe.python.prefix, pythonVersion: python.version, interpreter: python.interpreter };
  const layers = infos.flatMap((info): WheelLayerPlan[] => {
    // One collector per piece, so each layer's facts stand alone (and can be cached with it).
    const collectors = new Map<string, ElfCollector>();
    const layer = wheelLayerSource(info, {
      ...target,
      splitThreshold,
      inspect: ({ path, entry }) => collectors.get(path)!.entry(info.file, entry.name, path),
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
          : { piece: 'main', sha256: info.sha256, fileName: wheelName, ...target, splitThreshold: splitThreshold ?? SPLIT_THRESHOLD },
        python: { interpreter: python.interpreter, version: python.version, prefix: recipe.python.prefix },
        elfFacts: async () => ({ objects: await elf.finish(), problems: [...elf.problems] }),
        factsForCache: (facts) => factsForCache(info, split, facts),
        factsFromCache: (cached) => factsFromCache(info, split, cached),
      };
    });
  });

  return {
    layers,
    check: (facts) => runChecks({ closure, index, python, recipe, infos, layers, facts, depsCheck: options.depsCheck }),
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
}): Promise<{ warnings: string[]; env: Record<string, string[]> }> {
  const report = await checkWheels({
    closure: o.closure,
    index: o.index,
    python: o.python,
    wheels: o.infos,
    wheelFiles: o.layers.flatMap((l) => l.piece.files),
    // Sorted as one collector over all wheels would give them, whichever came from a cache.
    elfObjects: o.facts.flatMap((f) => f.objects).sort((a, b) => cmp(a.wheel, b.wheel) || cmp(a.entry, b.entry)),
    elfProblems: o.facts.flatMap((f) => f.problems),
    waiveRequirements: o.recipe.checks.waiveRequirements,
    waiveLibraries: o.recipe.checks.waiveLibraries,
    depsCheck: o.depsCheck,
    ldLibraryPath: splitPath(o.recipe.env?.LD_LIBRARY_PATH),
    machine: o.recipe.architecture === 'arm64' ? 'aarch64' : 'x86_64',
  });
  if (report.errors.length > 0) {
    const shown = report.errors.slice(0, 20);
    const more = report.errors.length - shown.length;
    throw new UserError(
      `the image cannot run as built (${report.errors.length} problem${report.errors.length === 1 ? '' : 's'}; waive with checks.waiveRequirements / checks.waiveLibraries in the recipe, or --no-deps-check):\n  ${shown.join('\n  ')}${more > 0 ? `\n  … and ${more} more` : ''}`,
    );
  }
  const sitePackages = [...new Set(o.layers.map((l) => l.layer.sitePackages))];
  const binDirs = [...new Set(o.layers.map((l) => l.layer.binDir))];
  const env: Record<string, string[]> = { PYTHONPATH: sitePackages, LD_LIBRARY_PATH: report.env.LD_LIBRARY_PATH };
  // Launchers go on PATH after the recipe's entries; an image without PATH gets the runtimes' default too,
  // since a PATH of only the wheels' bin would hide it.
  env.PATH = o.recipe.env?.PATH !== undefined ? binDirs : [...binDirs, ...DEFAULT_PATH.split(':')];
  return { warnings: report.warnings, env };
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

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function splitPath(value: string | undefined): string[] {
  return value ? value.split(':').filter(Boolean) : [];
}

function thresholdFromEnv(): number | undefined {
  const value = process.env[SPLIT_THRESHOLD_ENV];
  if (value === undefined || value === '') return undefined;
  if (!/^[1-9]\d*$/.test(value)) throw new UserError(`${SPLIT_THRESHOLD_ENV} must be a whole number of bytes, got "${value}"`);
  return Number(value);
}

function wheelFileName(file: string): string {
  return file.slice(file.lastIndexOf('/') + 1);
}
