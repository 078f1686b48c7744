import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import pLimit from 'p-limit';
import { loadClosure } from '../nix/closure.js';
import type { Closure, NarNode, StorePathInfo } from '../nix/types.js';
import { storePathName } from '../nix/store-path.js';
import { planLayers, type PlanOptions, type PlanStrategy } from '../plan/plan.js';
import { capLayers, checkLayerSize, sliceLabel, type CappedLayer, type StorePathSlice } from '../plan/size-cap.js';
import { checkLayerFormat, COMPRESSION_LEVELS, DEFAULT_GZIP_LEVEL, DEFAULT_ZSTD_LEVEL, type Compression, type LayerFormat } from '../layer/format.js';
import { Turns } from '../layer/codec.js';
import { countingSource } from '../layer/counting-source.js';
import { storePathSliceSource, storePathsEnds, writeStorePathsLayer } from '../layer/store-paths.js';
import { tarSegmentBytes, writeBlobFile, writeLayer, writeLayerFile, type LayerOutput } from '../layer/writer.js';
import { layerOf, ociLayerMediaType, type Image, type Layer } from '../model/image.js';
import { assembleImage, manifestDigest } from '../model/assemble.js';
import { emptyRecipe, type Recipe, type SbomChoice } from '../recipe/schema.js';
import type { AttachedDocument } from '../sbom/attach.js';
import type { ResolvedRequirements } from '../sbom/facts.js';
import type { ProvenanceInput } from '../sbom/provenance.js';
import { applyOverrides, type RecipeOverrides } from '../recipe/overrides.js';
import { resolveRecipe, toImageConfigSpec } from '../recipe/resolve.js';
import { rootLayerSource } from '../rootfs/root-layer.js';
import { openOutput, writeImage, type ImageOutput, type OutputFormat } from '../output/write.js';
import { formatBytes, parseByteSize } from '../util/units.js';
import { removeOnExit } from '../util/cleanup.js';
import { describeOsError, environmentErrorMessage } from '../util/os-errors.js';
import { UserError } from '../util/errors.js';
import { HashPool } from '../util/hash-pool.js';
import { UnzipPool } from '../wheels/unzip-pool.js';
import { sharedThreads } from '../util/threads.js';
import type { PreparedWheels, WheelElfFacts, WheelLayerPlan } from './wheels.js';
import { summarizeProblems, type Problem } from '../wheels/checks/problems.js';
import { checksFailed, ProblemsError, writeProblemsFile } from './problems.js';
import { CacheStore } from '../cache/store.js';
import { LayerCache, type Served } from '../cache/layer-cache.js';
import { exportIndexMemo, wheelInfoMemo } from '../cache/input-memo.js';
import { memoizedListing } from '../cache/listing-memo.js';
import { listNar } from '../nix/nar.js';
import { mattersToIndex } from '../wheels/checks/closure-index.js';
import { imageRootLayerKey, storePathSliceLayerKey, storePathsLayerKey, wheelLayerKey } from '../cache/keys.js';
import { holdsEntries, type CacheIndex, type CacheIndexEntry } from '../registry/cache-index.js';
import type { RegistryCacheOptions, RegistryLayers } from './registry-cache.js';
import { createHash } from 'node:crypto';
import { expandWheelPaths } from '../wheels/paths.js';

export interface BuildImageOptions {
  closures: string[];
  pathInfo?: string;
  recipe?: string;
  overrides: RecipeOverrides;
  /** Wheel files, or directories of them (every `*.whl` in each, sorted), after the recipe's. */
  wheels: string[];
  python?: string;
  /** false skips the wheels' requirements check. */
  depsCheck: boolean;
  /** false: libraries the image lacks are warnings, not errors (default true). */
  libraryCheck?: boolean;
  /** Write every problem the checks found to this file (also when they fail the build). */
  problemsFile?: string;
  /** A lock file the wheels must match (pip's --require-hashes form); replaces the recipe's wheelLock. */
  wheelLock?: string;
  /** Wheel files of at least this many bytes get a layer of their own (default 256 MiB). */
  wheelSplitSize?: number;
  /** A file or directory path, `-` for standard output, or null for none (the image is only pushed). */
  output: string | null;
  format: OutputFormat;
  /** `NAME[:TAG]` to record; when empty, the recipe's name and tag. */
  tags: string[];
  compression?: Compression;
  /** The compression's level (default: the recipe's, else gzip 6, zstd 3). */
  compressionLevel?: number;
  /** No layer blob larger than this many bytes (default: the recipe's, else no cap). */
  maxLayerSize?: number;
  maxLayers?: number;
  /** How store paths are grouped into layers (default: the recipe's, else size-aware). */
  layerStrategy?: PlanStrategy;
  /** Seconds since the epoch for every mtime and the config's `created`. */
  sourceDateEpoch: number;
  /** The layer cache's directory; null for none (layers are then written straight to the output). */
  cacheDir: string | null;
  /** Layers written at a time, and threads hashing (default: the number of CPUs). */
  jobs?: number;
  /** The registry as a shared layer cache (`--cache-from`): layers found there are neither made nor uploaded. */
  registryCache?: RegistryCacheOptions;
  log: (line: string) => void;
  /** Told how far the build is, for a progress display (the plain `log` lines say the same). */
  progress?: BuildProgress;
  warn: (line: string) => void;
  /** SBOM documents to attach (default: the recipe's `sbom`, else none). */
  sbom?: SbomChoice;
  /** Attach SLSA provenance (default: the recipe's `provenance`, else none). */
  provenance?: boolean;
  /** Also write the documents into this directory (it must exist). */
  sbomDir?: string;
}

export interface BuildProgress {
  reading(bytesRead: number, totalBytes: number): void;
  /** The layers planned, and about how many bytes of files they hold (NAR sizes, wheels' installed sizes). */
  planned(layers: number, totalBytes: number): void;
  /** Layer `index` is being made (a layer found in the cache never starts): about `totalBytes` of files. */
  layerStarted(index: number, label: string, totalBytes: number): void;
  /** `bytes` more of layer `index`'s files went into its tar. */
  layerProgress(index: number, bytes: number): void;
  /** `expectedBytes` is what `planned` counted for the layer. */
  layerDone(index: number, report: LayerReport, expectedBytes: number): void;
  /** The build ended, whether it succeeded or not. */
  stop(): void;
}

/** Where a layer came from: the local layer cache, the registry cache (`--cache-from`), or made now. */
export type LayerOrigin = 'local' | 'registry' | 'built';

/** How a layer came to be: found in the cache, or made (and how long it took). */
export interface LayerReport {
  layer: Layer;
  /** True when the layer's bytes all came from the cache (nothing was compressed). */
  reused: boolean;
  from: LayerOrigin;
  /** Wall-clock seconds spent on this layer. */
  seconds: number;
}

/**
 * A built image. Its layers' bytes stay where the build left them (the output, the cache, the work
 * directory) until `dispose`: a push reads them from there, nothing is read back from an archive.
 */
export interface BuiltImage {
  image: Image;
  manifestDigest: string;
  layers: LayerReport[];
  tags: string[];
  /** Wall-clock seconds per stage. */
  timings: { closure: number; layers: number; checks: number; output: number };
  /** Removes the build's work directory; the image's layers may not be read afterwards. */
  dispose(): void;
  /**
   * What later builds read (the inputs' memos) being written to the layer cache, from the next turn of
   * the event loop: while a push waits on the registry, not while this build works. Never rejects
   * (a failure is a warning); await it before the process ends.
   */
  saved: Promise<void>;
  /** What the wheel checks found that did not stop the build (warnings). */
  problems: Problem[];
  /** The SBOM and provenance documents made (also in `image.attachments`); empty when none was asked for. */
  documents: AttachedDocument[];
  /** Every keyed layer of the image, as a registry cache index records it (`--cache-to`). */
  cacheEntries: CacheIndex;
  /**
   * The registry cache index read at the start (`--cache-from`) held every entry of `cacheEntries`:
   * writing it back to the same index would change nothing.
   */
  cacheIndexHeld: boolean;
}

const NO_WHEELS: PreparedWheels = { layers: [], check: async () => ({ problems: [], env: {} }) };

/** The mtime when SOURCE_DATE_EPOCH is not set: 1970-01-01T00:00:01Z, as nixpkgs' dockerTools uses. */
export const DEFAULT_SOURCE_DATE_EPOCH = 1;
export const DEFAULT_MAX_LAYERS = 100;
/** Size-aware grouping changes far fewer bytes when one store path changes (see plan/size-aware.ts). */
export const DEFAULT_LAYER_STRATEGY: PlanStrategy = 'size-aware';

/** The layer format of a build; a level that does not fit the compression is a one-line error. */
function layerFormatOf(compression: Compression, level: number | undefined, mtime: number): LayerFormat {
  if (level !== undefined) {
    const range = COMPRESSION_LEVELS[compression];
    if (!range) throw new UserError('a compression level needs --compression gzip or zstd, not none');
    if (!Number.isInteger(level) || level < range.min || level > range.max) {
      throw new UserError(`--compression-level ${level} does not fit ${compression}: it takes ${range.min} to ${range.max}`);
    }
  }
  const format: LayerFormat = {
    compression,
    gzipLevel: compression === 'gzip' ? (level ?? DEFAULT_GZIP_LEVEL) : DEFAULT_GZIP_LEVEL,
    ...(compression === 'zstd' && { zstdLevel: level ?? DEFAULT_ZSTD_LEVEL }),
    mtime,
  };
  checkLayerFormat(format);
  return format;
}

/** A size from the recipe (`5G`), or a one-line error naming the key. */
function recipeSize(text: string, key: string): number {
  const size = parseByteSize(text);
  if (size === null || size === 0) throw new UserError(`recipe ${key}: expected a size such as 5G, 500M or 2048 (bytes), got ${JSON.stringify(text)}`);
  return size;
}

/**
 * The store paths' layers: the plan, then, under `--max-layer-size`, cut to the cap. The cap wins over
 * `--max-layers`: when cutting makes more layers than the budget, the plan is made again with fewer
 * groups, until the layers fit or no plan can (a one-line error).
 */
async function planCappedLayers(closure: Closure, options: PlanOptions & { reserved: number }, cap: number | undefined): Promise<CappedLayer[]> {
  if (cap === undefined) return planLayers(closure, options);
  let budget = options.maxLayers;
  for (;;) {
    const capped = await capLayers(planLayers(closure, { ...options, maxLayers: budget }), closure, cap, listNar);
    const over = capped.length + options.reserved - options.maxLayers;
    if (over <= 0) return capped;
    budget -= over;
    if (budget - options.reserved < 1) {
      throw new UserError(
        `--max-layer-size ${formatBytes(cap)} needs ${capped.length} layers for the store paths, more than --max-layers ${options.maxLayers} leaves for them (${options.maxLayers - options.reserved}): raise --max-layers or the cap`,
      );
    }
  }
}

/** A slice of a store path cut by `--max-layer-size`: a layer of its own, cached by the path and the slice. */
function storePathSliceJob(info: StorePathInfo, slice: StorePathSlice, format: LayerFormat, turns: Turns): LayerJob {
  const source = (onBytes?: (bytes: number) => void) => countingSource(storePathSliceSource(info, slice), onBytes);
  const key = storePathSliceLayerKey(info, slice, format);
  return {
    label: sliceLabel(storePathName(info.path), slice),
    contents: [info.path],
    key,
    find: (cache) => cache.findWholeLayer(key, [info.path], source(), async () => null),
    expected: Math.round(info.narSize / slice.count),
    cached: (cache, onBytes) => cache.wholeLayer(key, [info.path], source(onBytes), async () => null),
    direct: (out, index, onBytes) =>
      out.writeLayer(index, { contents: [info.path], compression: format.compression }, (to) => writeLayer(source(onBytes), format, to, { turns })),
  };
}

/** One layer to make: what it holds, and how to make it through the cache or straight to the output. */
interface LayerJob {
  label: string;
  contents: string[];
  /** Its layer-cache key, by which a registry cache knows it; null when no registry cache is used and keying costs work (the image root's is its tar's hash). */
  key: string | null;
  /** The local cache's copy, when it holds the layer whole; nothing is made. */
  find(cache: LayerCache): Promise<Served | null>;
  /** Takes what a registry cache keeps beside the layer (a wheel's facts); false when it lacks what is needed. */
  fromRegistry?(entry: CacheIndexEntry): boolean;
  /** What a registry cache is to keep beside the layer, once it is made or found. */
  facts?(): unknown;
  /** About how many bytes of files it holds (NAR sizes, a wheel's installed size), for progress. */
  expected: number;
  /** Its tar's size, when known before it is made (a wheel's layer, unless a script is rewritten). */
  size?(): number | undefined;
  /** Through the cache: served or made and kept. */
  cached(cache: LayerCache, onBytes?: (bytes: number) => void): Promise<Served>;
  /** Without a cache: written straight to where the output puts it. */
  direct(output: ImageOutput, index: number, onBytes?: (bytes: number) => void): Promise<Layer>;
}

/**
 * The build, in stages: read the closure (and the recipe and wheels), plan the layers, produce them
 * (through the cache, or straight into the output), check the wheels, assemble config and manifest,
 * complete the output. Every check that can fail runs before the output is completed, and the output
 * appears atomically, so a failed build leaves none.
 */
export async function buildImage(options: BuildImageOptions): Promise<BuiltImage> {
  // The schema validator and the wheel readers load only when a build needs them (start-up time counts).
  const recipe = applyOverrides(options.recipe ? (await import('../recipe/load.js')).loadRecipe(options.recipe) : emptyRecipe(), options.overrides);
  const compression: Compression = options.compression ?? recipe.compression ?? 'gzip';
  const maxLayers = options.maxLayers ?? recipe.maxLayers ?? DEFAULT_MAX_LAYERS;
  if (!Number.isInteger(maxLayers) || maxLayers < 2) {
    throw new UserError(`--max-layers must be a whole number of at least 2, got ${maxLayers}`);
  }
  const maxLayerSize = options.maxLayerSize ?? (recipe.maxLayerSize !== undefined ? recipeSize(recipe.maxLayerSize, 'maxLayerSize') : undefined);
  if (maxLayerSize !== undefined && (!Number.isInteger(maxLayerSize) || maxLayerSize < 1)) throw new UserError(`--max-layer-size must be a size of at least 1 byte, got ${maxLayerSize}`);
  const jobs = options.jobs ?? availableParallelism();
  if (!Number.isInteger(jobs) || jobs < 1 || jobs > 256) throw new UserError(`--jobs must be a whole number from 1 to 256, got ${jobs}`);
  if (options.output === null && options.format === 'oci-layout') throw new UserError('an oci-layout needs --output DIR');
  if (options.sbomDir !== undefined && (options.sbom ?? recipe.sbom) === undefined && !(options.provenance ?? recipe.provenance)) {
    throw new UserError("--sbom-dir needs --sbom or --provenance (or the recipe's sbom or provenance)");
  }
  const format = layerFormatOf(compression, options.compressionLevel ?? recipe.compressionLevel, options.sourceDateEpoch);
  if (compression === 'zstd' && options.format === 'docker-archive' && options.output !== null) {
    throw new UserError('--compression zstd cannot go into a docker-archive: Docker before 23 cannot load zstd layers (use --format oci-archive, which podman, containerd and Docker 23+ load)');
  }

  // With a cache, the build's work directory is inside it: cached blobs are hard-linked into the work
  // directory and new layers linked into the cache, which only works on one file system (a /tmp on
  // tmpfs would otherwise get a copy of every cached layer, in memory).
  const shared = options.cacheDir ? await CacheStore.open(options.cacheDir) : null;
  await shared?.sweep(); // what killed builds left behind
  const work = shared ? await shared.makeBuildDir() : mkdtempSync(join(tmpdir(), 'nix2oci-build-'));
  const forget = removeOnExit(work);
  const dispose = () => {
    forget();
    rmSync(work, { recursive: true, force: true });
  };
  // --jobs bounds the layers tarred and compressed at once, the frames compressing, and the threads hashing.
  const hashes = new HashPool(jobs);
  // On the threads the hashing uses. Uncompressed, inflating is most of the work: every core does it.
  // Compressed, the compression needs the cores (and an unzip thread more only held more memory).
  const unzip = new UnzipPool(compression === 'none' ? jobs : Math.max(1, jobs - 1));
  const turns = new Turns(jobs);
  const clock = stopwatch();
  let output: ImageOutput | null = null;
  // The wheels given on the command line are read once the first export is parsed, while its NARs are
  // still being hashed (the recipe's are known only once the closure is resolved); their errors are
  // told later, in order.
  const wheelInfos = shared ? wheelInfoMemo(shared) : undefined;
  const readWheel = options.wheels.length > 0 ? import('./wheels.js').then((m) => m.wheelReader(hashes, wheelInfos)) : null;
  readWheel?.catch(() => {});
  let wheelsStarted = false;
  const startWheels = () => {
    if (wheelsStarted) return;
    wheelsStarted = true;
    readWheel?.then((read) => expandWheelPaths(options.wheels).forEach(read)).catch(() => {});
  };
  // The registry cache's index is read while the closure is.
  const opening = options.registryCache ? import('./registry-cache.js').then((m) => m.RegistryLayers.open(options.registryCache!, options.log, options.warn)) : Promise.resolve(null);
  opening.catch(() => {});
  let remote: RegistryLayers | null = null;
  // The wheel checks' closure index needs a listing of every store path: noted as the exports are read, not read again.
  const listings = new Map<string, NarNode[]>();
  const noted = (info: StorePathInfo) => listings.get(info.path);
  try {
    const closure = await readClosure(options, work, shared, hashes, { listings, onParsed: startWheels });
    options.log(`closure: ${closure.paths.size} store paths (roots: ${closure.roots.map(storePathName).join(', ')})`);
    if (options.cacheDir) options.log(`layer cache: ${options.cacheDir}`);

    const resolved = resolveRecipe(recipe, closure, options.recipe);
    const wheelFiles = expandWheelPaths([...resolved.wheels, ...options.wheels]);
    const lock = options.wheelLock ?? resolved.wheelLock;
    const wheels: PreparedWheels =
      wheelFiles.length === 0 && lock === undefined
        ? NO_WHEELS
        : await (await import('./wheels.js'))
            .prepareWheels({
              files: wheelFiles,
              closure,
              recipe: resolved,
              python: options.python,
              depsCheck: options.depsCheck,
              libraryCheck: options.libraryCheck,
              lock,
              // Under a cap, wheel files the cap could not hold with others get a layer of their own.
              splitThreshold:
                maxLayerSize !== undefined
                  ? Math.min(options.wheelSplitSize ?? (await import('../wheels/install.js')).SPLIT_THRESHOLD, maxLayerSize)
                  : options.wheelSplitSize,
              hashes,
              unzip,
              list: shared ? memoizedListing(shared, listNar, mattersToIndex, noted) : async (info) => noted(info) ?? listNar(info),
              wheelInfos,
              ...(readWheel && { read: await readWheel }),
            })
            .catch(async (err: unknown) => {
              // The lock's problems are problems too: --problems lists them.
              if (err instanceof ProblemsError && options.problemsFile !== undefined) await writeProblemsFile(options.problemsFile, err.problems);
              throw err;
            });

    // Plan: store paths grouped into layers, one layer per wheel piece, the image root last.
    const strategy = options.layerStrategy ?? recipe.layerStrategy ?? DEFAULT_LAYER_STRATEGY;
    const plan = await planCappedLayers(closure, { maxLayers, reserved: 1 + wheels.layers.length, strategy }, maxLayerSize);
    const ends = await storePathsEnds(format);
    const wheelFacts: WheelElfFacts[] = [];
    const root = rootLayerSource(closure, { ...resolved.root, lowerLayerFiles: wheels.layers.flatMap((l) => l.piece.files) }, { listed: noted });
    // Keying the image root means tarring it once more: only a registry cache needs it.
    const rootKey = options.registryCache ? imageRootLayerKey(createHash('sha256').update(await tarSegmentBytes(root.source, format.mtime)).digest('hex'), format) : null;
    const wheelCacheFacts: WheelElfFacts[] = [];
    const jobsToDo: LayerJob[] = [
      ...plan.map((group): LayerJob => {
        if (group.slice) return storePathSliceJob(closure.paths.get(group.paths[0])!, group.slice, format, turns);
        const infos = group.paths.map((path) => closure.paths.get(path)!);
        return {
          label: group.paths.length === 1 ? storePathName(group.paths[0]!) : `${group.paths.length} store paths`,
          contents: group.paths,
          key: storePathsLayerKey(infos, format),
          find: (cache) => cache.findStorePathLayer(infos),
          expected: infos.reduce((n, info) => n + info.narSize, 0),
          cached: (cache, onBytes) => cache.storePathLayer(infos, onBytes),
          direct: (out, index, onBytes) =>
            out.writeLayer(index, { contents: group.paths, compression }, (to) => writeStorePathsLayer(infos, ends, format, to, { turns, onBytes })),
        };
      }),
      ...wheels.layers.map((wheel, i): LayerJob => {
        const key = wheelLayerKey(wheel.key, format);
        // Uncompressed, an unzip thread writes the whole layer when it can be framed beforehand.
        const whole = (onBytes?: (bytes: number) => void) => (compression === 'none' ? (out: LayerOutput) => wheel.piece.writeTar(out, format.mtime, onBytes) : undefined);
        return {
          label: wheel.contents.join(', '),
          contents: wheel.contents,
          key,
          find: async (cache) => {
            const served = await cache.findWholeLayer(key, wheel.contents, wheel.source, async () => wheel.factsForCache(await wheel.elfFacts()));
            if (served) wheelFacts[i] = wheel.factsFromCache((wheelCacheFacts[i] = served.facts));
            return served;
          },
          fromRegistry: (entry) => {
            // The index's facts were checked for their shape as it was read.
            if (entry.facts === undefined) return false;
            wheelFacts[i] = wheel.factsFromCache((wheelCacheFacts[i] = entry.facts as WheelElfFacts));
            return true;
          },
          facts: () => wheelCacheFacts[i],
          expected: installedSize(wheel),
          cached: async (cache, onBytes) => {
            const served = await cache.wholeLayer(
              key,
              wheel.contents,
              countingSource(wheel.source, onBytes),
              async () => wheel.factsForCache(await wheel.elfFacts()),
              whole(onBytes),
            );
            wheelFacts[i] = wheel.factsFromCache((wheelCacheFacts[i] = served.facts));
            return served;
          },
          size: () => wheel.piece.tarSize(format.mtime) ?? undefined,
          direct: async (out, index, onBytes) => {
            const layer = await out.writeLayer(
              index,
              { contents: wheel.contents, compression },
              (to) => whole(onBytes)?.(to) ?? writeLayer(countingSource(wheel.source, onBytes), format, to, { turns }),
            );
            wheelFacts[i] = await wheel.elfFacts();
            wheelCacheFacts[i] = wheel.factsForCache(wheelFacts[i]);
            return layer;
          },
        };
      }),
      {
        // The image-root layer is tiny and depends on the recipe: never cached, made alongside the others.
        label: 'image root',
        contents: root.contents,
        key: rootKey,
        find: async () => null,
        expected: 0,
        cached: async () => {
          const file = await writeLayerFile(root.source, format, work, { turns });
          return { layer: layerOf({ ...file, uncompressedSize: file.tarSize, compression, contents: root.contents }), reused: false };
        },
        direct: (out, index) => out.writeLayer(index, { contents: root.contents, compression }, (to) => writeLayer(root.source, format, to, { turns })),
      },
    ];
    const timings = { closure: clock.lap(), layers: 0, checks: 0, output: 0 };
    options.progress?.planned(jobsToDo.length, jobsToDo.reduce((n, job) => n + job.expected, 0));

    // Produce. Without a cache the layers go straight to the output, which opens now.
    if (!shared) output = await openOutput({ format: options.format, output: options.output, hashes, workDir: work });
    const cache = shared
      ? new LayerCache(shared, format, work, { turns, hashes, limitBuilds: pLimit(jobs), warn: options.warn })
      : null;
    remote = await opening;
    const mediaType = ociLayerMediaType(compression);
    /** A layer the registry holds: nothing to make; an output fetches its bytes (checked as they stream). */
    const fromRegistry = async (job: LayerJob, index: number, entry: CacheIndexEntry): Promise<Layer> => {
      if (options.output === null) return remote!.layer(entry, job.contents, compression);
      options.log(`fetching ${entry.digest.slice(7, 19)} (${formatBytes(entry.size)}) from the registry for the output`);
      const meta = { contents: job.contents, compression };
      if (output) return output.writeLayer(index, meta, (to) => remote!.fetch(entry, to));
      const file = await writeBlobFile(work, (to) => remote!.fetch(entry, to));
      return layerOf({ ...file, uncompressedSize: file.tarSize, ...meta, pieces: file.pieces });
    };
    // Uncompressed straight to the output, layers of known size are placed at once and made biggest
    // first (the others in their turn): one long layer at the end would leave the other cores idle.
    const sizes = !cache && compression === 'none' ? jobsToDo.map((job) => job.size?.()) : [];
    output?.expectSizes?.(sizes);
    const order = sizes.length > 0 ? biggestFirst(sizes) : undefined;
    const reports = await produceLayers(jobsToDo, options, async (job, index, onBytes) => {
      // Local cache first, then the registry's; else the layer is made.
      if (remote) {
        const local = cache ? await job.find(cache) : null;
        if (local) return { ...local, from: 'local' };
        const entry = job.key === null ? null : await remote.find(job.key, mediaType);
        if (entry && (job.fromRegistry?.(entry) ?? true)) return { layer: await fromRegistry(job, index, entry), reused: true, from: 'registry' };
      }
      const served = cache ? await job.cached(cache, onBytes) : { layer: await job.direct(output!, index, onBytes), reused: false };
      return { ...served, from: served.reused ? 'local' : 'built' };
    },
      // Through the cache, lookups wait in parallel (builds are bounded inside it). Straight to the output,
      // `jobs` at a time, so small layers do not leave cores idle (an archive places each in turn).
      cache ? Math.max(16, 4 * jobs) : jobs,
      order,
    );
    timings.layers = clock.lap();
    const indexRead = remote?.index ?? null;
    await remote?.close();
    remote = null;
    if (maxLayerSize !== undefined) {
      for (const [i, r] of reports.entries()) checkLayerSize(maxLayerSize, r.layer.descriptor.size, { contents: jobsToDo[i]!.contents, slice: plan[i]?.slice });
    }

    for (const w of root.warnings) options.warn(w);
    const checked = await wheels.check(wheelFacts);
    // The warnings (the traps' hints among them) are told whether or not the errors stop the build.
    for (const w of summarizeProblems(checked.problems).warnings) options.warn(w);
    if (options.problemsFile !== undefined) await writeProblemsFile(options.problemsFile, checked.problems);
    if (checked.problems.some((p) => p.severity === 'error')) throw checksFailed(checked.problems, options.problemsFile);
    timings.checks = clock.lap();

    const tags = options.tags.length > 0 ? options.tags : resolved.tags;
    const { image, warnings } = assembleImage({
      layers: reports.map((r) => r.layer),
      config: toImageConfigSpec(resolved, checked.env),
      created: new Date(options.sourceDateEpoch * 1000),
      tags,
      format: options.format,
    });
    for (const w of warnings) options.warn(w);
    const documents = await attachDocuments(options, recipe, { image, closure, plan, wheels: wheels.layers, served: checked.served ?? new Map() });
    // Cached layers are checked as the output copies them; a damaged one is made again there.
    if (output) await output.finish(image);
    else await writeImage(image, { format: options.format, output: options.output, hashes, workDir: work });
    timings.output = clock.lap();
    for (const [i, r] of reports.entries()) {
      // A cached layer whose bytes proved damaged as the output read them was made again there.
      if (r.reused && r.layer.unverified && !image.layers[i]!.unverified && r.layer.pieces !== image.layers[i]!.pieces) {
        r.reused = false;
        r.from = 'built';
        options.warn(`the layer cache's copy of ${r.layer.descriptor.digest} was damaged; it was made again`);
      }
      r.layer = image.layers[i]!;
    }
    if (options.sbomDir !== undefined && documents.length > 0) await (await import('../sbom/attach.js')).writeSbomDir(options.sbomDir, documents);
    const pushed = new Date().toISOString().slice(0, 10);
    const cacheEntries: CacheIndex = new Map(
      reports.flatMap((r, i): [string, CacheIndexEntry][] => {
        const { key } = jobsToDo[i]!;
        if (key === null) return [];
        const { layer } = r;
        const facts = jobsToDo[i]!.facts?.();
        const entry: CacheIndexEntry = { digest: layer.descriptor.digest, diffId: layer.diffId, size: layer.descriptor.size, uncompressedSize: layer.uncompressedSize ?? 0, mediaType: layer.descriptor.mediaType, pushed, ...(facts !== undefined && { facts }) };
        return [[key, entry]];
      }),
    );
    const saved = saveForLater(shared, options.warn);
    const cacheIndexHeld = indexRead !== null && holdsEntries(indexRead, cacheEntries);
    return { image, manifestDigest: manifestDigest(image), layers: reports, tags: image.tags, timings, problems: checked.problems, documents, cacheEntries, cacheIndexHeld, dispose, saved };
  } catch (err) {
    // A failed build still keeps what it read from its inputs.
    await saveForLater(shared, options.warn);
    await output?.abandon();
    await (remote ?? (await opening.catch(() => null)))?.close();
    dispose();
    throw err;
  } finally {
    hashes.close();
    // Their teardown overlaps the push instead of holding up the process's exit (about 15 ms each).
    sharedThreads().stopIdle();
    options.progress?.stop();
  }
}

/** Writes what the cache store put off (see CacheStore.writeLater), once this turn of the event loop is done. */
async function saveForLater(shared: CacheStore | null, warn: (line: string) => void): Promise<void> {
  if (!shared) return;
  await new Promise<void>((resolve) => setImmediate(resolve));
  await shared.flush().catch((err: unknown) => warn(`the layer cache could not keep what was read from the inputs: ${environmentErrorMessage(err) ?? describeOsError(err)}`));
}

/**
 * The SBOM and provenance asked for (by flag or recipe), made from what the build knows and set on the
 * image as attachments, so the output and a push carry them. None asked for: none made, nothing loaded.
 */
async function attachDocuments(
  options: BuildImageOptions,
  recipe: Recipe,
  built: { image: Image; closure: Closure; plan: { paths: string[] }[]; wheels: WheelLayerPlan[]; served: ResolvedRequirements },
): Promise<AttachedDocument[]> {
  const sbom = options.sbom ?? recipe.sbom;
  const provenance = options.provenance ?? recipe.provenance ?? false;
  if (sbom === undefined && !provenance) return [];
  const { gatherFacts } = await import('../sbom/facts.js');
  const { sbomDocuments, attachmentsOf } = await import('../sbom/attach.js');
  const { image } = built;
  const storePathLayers = new Map<string, number[]>();
  built.plan.forEach((group, index) => {
    for (const path of group.paths) storePathLayers.set(path, [...(storePathLayers.get(path) ?? []), index]);
  });
  const byWheel = new Map<string, { info: WheelLayerPlan['info']; layerIndexes: number[] }>();
  built.wheels.forEach((w, i) => {
    const entry = byWheel.get(w.info.file) ?? { info: w.info, layerIndexes: [] };
    entry.layerIndexes.push(built.plan.length + i);
    byWheel.set(w.info.file, entry);
  });
  const facts = gatherFacts({
    image,
    closure: built.closure,
    wheels: [...byWheel.values()],
    storePathLayers,
    requirements: built.served,
    sourceDateEpoch: options.sourceDateEpoch,
    warn: options.warn,
  });
  const documents = sbomDocuments({
    facts,
    sbom,
    provenance: provenance ? { inputs: await provenanceInputs(options, built.closure, [...byWheel.values()].map((w) => w.info)), parameters: byteParameters(options, recipe) } : undefined,
  });
  if (options.format === 'docker-archive' && options.output !== null) {
    options.warn('a docker-archive has no place for attachments: the SBOM and provenance go only to --sbom-dir and --push');
  }
  image.attachments = attachmentsOf(facts, documents);
  return documents;
}

/** Every input file by sha256, in the order given: exports (stdin's spooled copy), path-info, recipe, wheels. */
async function provenanceInputs(options: BuildImageOptions, closure: Closure, wheels: WheelLayerPlan['info'][]): Promise<ProvenanceInput[]> {
  const { createHash } = await import('node:crypto');
  const { createReadStream } = await import('node:fs');
  const sha256 = async (file: string) => {
    const hash = createHash('sha256');
    for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
    return hash.digest('hex');
  };
  const given = new Set(options.closures);
  // stdin was spooled into the work directory: the one export file nobody named.
  const spooled = [...new Set([...closure.paths.values()].map((p) => p.source.file))].filter((f) => !given.has(f));
  const inputs: ProvenanceInput[] = [];
  for (const file of options.closures) {
    const path = file === '-' ? spooled[0] : file;
    if (path !== undefined) inputs.push({ kind: 'closure', name: file === '-' ? 'stdin' : file, sha256: await sha256(path) });
  }
  if (options.pathInfo !== undefined) inputs.push({ kind: 'path-info', name: options.pathInfo, sha256: await sha256(options.pathInfo) });
  if (options.recipe !== undefined) inputs.push({ kind: 'recipe', name: options.recipe, sha256: await sha256(options.recipe) });
  for (const w of wheels) inputs.push({ kind: 'wheel', name: w.file, sha256: w.sha256 });
  return inputs;
}

/** The flags and recipe values that decide the image's bytes besides the inputs. */
function byteParameters(options: BuildImageOptions, recipe: Recipe): Record<string, unknown> {
  return {
    format: options.format,
    tags: options.tags.length > 0 ? options.tags : undefined,
    compression: options.compression ?? recipe.compression ?? 'gzip',
    maxLayers: options.maxLayers ?? recipe.maxLayers ?? DEFAULT_MAX_LAYERS,
    layerStrategy: options.layerStrategy ?? recipe.layerStrategy ?? DEFAULT_LAYER_STRATEGY,
    wheelSplitSize: options.wheelSplitSize,
    python: options.python,
    overrides: Object.keys(options.overrides).length > 0 ? options.overrides : undefined,
    sbom: options.sbom ?? recipe.sbom,
  };
}

/** Reads the closure; its NARs are hashed only when something uses the hashes (the cache, --path-info, several exports). */
async function readClosure(
  options: BuildImageOptions,
  work: string,
  shared: CacheStore | null,
  hashes: HashPool,
  { listings, onParsed }: { listings: Map<string, NarNode[]>; onParsed: () => void },
): Promise<Closure> {
  options.log(`reading ${options.closures.map((f) => (f === '-' ? 'stdin' : f)).join(', ')}`);
  const needHashes = shared !== null || options.pathInfo !== undefined || options.closures.length > 1 || Boolean(options.registryCache?.from);
  // Per file (a file's hashing may still report while the next is parsed): added up across the files given.
  const files = new Map<string, { read: number; total: number }>();
  return loadClosure(options.closures, {
    pathInfoFile: options.pathInfo,
    tmpDir: work,
    hashes: needHashes ? hashes : null,
    memo: shared ? exportIndexMemo(shared) : undefined,
    listing: { keep: mattersToIndex, found: (path, nodes) => void (listings.has(path) || listings.set(path, nodes)) },
    onParsed,
    onRecalled: (file) => options.log(`${file}: unchanged since it was last indexed; its index comes from the cache`),
    onProgress: (file, read, total) => {
      files.set(file, { read, total });
      let [allRead, allTotal] = [0, 0];
      for (const f of files.values()) [allRead, allTotal] = [allRead + f.read, allTotal + f.total];
      options.progress?.reading(allRead, allTotal);
    },
  });
}

/**
 * Makes every layer, `atOnce` at a time, started in plan order (an output places them in that order),
 * reporting each as it is done. After a failure no further layer starts; those running settle first,
 * so none writes into a removed work directory. Results keep the plan's order.
 */
async function produceLayers(
  jobs: LayerJob[],
  options: BuildImageOptions,
  make: (job: LayerJob, index: number, onBytes: ((bytes: number) => void) | undefined) => Promise<Served & { from: LayerOrigin }>,
  atOnce: number,
  /** The indices of `jobs` in the order they start (default: plan order). */
  order: number[] = jobs.map((_, i) => i),
): Promise<LayerReport[]> {
  const pool = pLimit(atOnce);
  let failure: { error: unknown } | null = null;
  let finished = 0;
  const started = new Map<number, Promise<LayerReport>>();
  for (const index of order) {
    const job = jobs[index]!;
    started.set(
      index,
      pool(async () => {
        if (failure) throw failure.error;
        try {
          const since = performance.now();
          const served = await make(job, index, counter(options, index, job));
          const report: LayerReport = { ...served, seconds: (performance.now() - since) / 1000 };
          finished++;
          options.progress?.layerDone(index, report, job.expected);
          options.log(
            `layer ${String(index + 1).padStart(3)}/${jobs.length} ${ORIGIN_WORDS[report.from]} ${served.layer.descriptor.digest.slice(7, 19)} ` +
              `${formatBytes(served.layer.uncompressedSize ?? 0).padStart(9)} ${job.label} (${report.seconds.toFixed(1)} s; ${finished}/${jobs.length} done)`,
          );
          return report;
        } catch (error) {
          failure ??= { error };
          throw error;
        }
      }),
    );
  }
  const settled = await Promise.allSettled(jobs.map((_, index) => started.get(index)!));
  if (failure) throw (failure as { error: unknown }).error;
  return settled.map((r) => (r as PromiseFulfilledResult<LayerReport>).value);
}

/** Indices to start: those of unknown size first, in plan order (they wait for their turn), then the rest biggest first. */
function biggestFirst(sizes: (number | undefined)[]): number[] {
  const indices = sizes.map((_, i) => i);
  const unknown = indices.filter((i) => sizes[i] === undefined);
  const known = indices.filter((i) => sizes[i] !== undefined).sort((a, b) => sizes[b]! - sizes[a]! || a - b);
  return [...unknown, ...known];
}

const ORIGIN_WORDS: Record<LayerOrigin, string> = { local: 'reused  ', registry: 'registry', built: 'built   ' };

/** Reports a layer's file bytes as they are tarred; the first report says it is being made. None without a display. */
function counter(options: BuildImageOptions, index: number, job: LayerJob): ((bytes: number) => void) | undefined {
  const progress = options.progress;
  if (!progress) return undefined;
  let started = false;
  return (bytes: number) => {
    if (!started) {
      started = true;
      progress.layerStarted(index, job.label, job.expected);
    }
    progress.layerProgress(index, bytes);
  };
}

function stopwatch(): { lap(): number } {
  let last = performance.now();
  return {
    lap() {
      const now = performance.now();
      const seconds = (now - last) / 1000;
      last = now;
      return seconds;
    },
  };
}

/** About how many bytes of files a wheel layer installs (a split-off file's size, or the rest of the wheel's). */
function installedSize(plan: WheelLayerPlan): number {
  if (plan.piece.split) return plan.piece.split.entry.size;
  const split = new Set(plan.layer.pieces.flatMap((p) => (p.split ? [p.split.entry.name] : [])));
  return plan.info.entries.reduce((n, e) => n + (e.isDir || split.has(e.name) ? 0 : e.size), 0);
}
