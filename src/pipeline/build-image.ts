import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import pLimit from 'p-limit';
import { loadClosure } from '../nix/closure.js';
import type { Closure, StorePathInfo } from '../nix/types.js';
import { planLayers, type PlanStrategy } from '../plan/plan.js';
import { DEFAULT_GZIP_LEVEL, writeLayer } from '../layer/write.js';
import { storePathsSource } from '../layer/store-paths.js';
import { countingSource } from '../layer/counting-source.js';
import { setLayerJobs } from '../layer/jobs.js';
import { setHashThreads } from '../util/hash-pool.js';
import type { Compression, LayerBlob } from '../layer/types.js';
import { emptyRecipe } from '../recipe/schema.js';
import { applyOverrides, type RecipeOverrides } from '../recipe/overrides.js';
import { resolveRecipe, toImageConfigSpec } from '../recipe/resolve.js';
import { rootLayerSource } from '../rootfs/root-layer.js';
import { assembleImage, manifestDigest } from '../model/assemble.js';
import { writeImage, type OutputFormat } from '../output/write.js';
import { BlobCheckError } from '../output/archive-file.js';
import type { Image } from '../model/image.js';
import { formatBytes } from '../util/units.js';
import { removeOnExit } from '../util/cleanup.js';
import { UserError } from '../util/errors.js';
import type { PreparedWheels, WheelElfFacts, WheelLayerPlan } from './wheels.js';
import { CacheStore } from '../cache/store.js';
import { LayerCache } from '../cache/layer-cache.js';
import { exportIndexMemo, wheelInfoMemo } from '../cache/input-memo.js';
import { memoizedListing } from '../cache/listing-memo.js';
import { listNar } from '../nix/nar.js';
import { mattersToIndex } from '../wheels/checks/closure-index.js';
import { wheelLayerKey, type LayerSettings } from '../cache/keys.js';
import { writeWholeLayer } from '../layer/segment.js';

export interface BuildImageOptions {
  closures: string[];
  pathInfo?: string;
  recipe?: string;
  overrides: RecipeOverrides;
  wheels: string[];
  python?: string;
  depsCheck: boolean;
  /** A file or directory path, or `-` for standard output. */
  output: string;
  format: OutputFormat;
  /** `NAME[:TAG]` to record; when empty, the recipe's name and tag. */
  tags: string[];
  compression?: Compression;
  maxLayers?: number;
  /** How store paths are grouped into layers (default: the recipe's, else size-aware). */
  layerStrategy?: PlanStrategy;
  /** Seconds since the epoch for every mtime and the config's `created`. */
  sourceDateEpoch: number;
  /** The layer cache's directory; null for none (layers are then built through a throwaway one). */
  cacheDir: string | null;
  /** Layers written at a time (default: the number of CPUs). */
  jobs?: number;
  log: (line: string) => void;
  /** Told how far the build is, for a progress display (the plain `log` lines say the same). */
  progress?: BuildProgress;
  /** Called once the build ends, whether it succeeded or not, before the work directory goes. */
  stopProgress?: () => void;
  warn: (line: string) => void;
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
  layerDone(index: number, layer: BuiltLayer, expectedBytes: number): void;
}

export interface BuiltLayer {
  blob: LayerBlob;
  contents: string[];
  /** True when the layer's bytes all came from the cache (nothing was compressed). */
  reused: boolean;
  /** Wall-clock seconds spent on this layer. */
  seconds: number;
}

export interface BuildImageResult {
  image: Image;
  manifestDigest: string;
  layers: BuiltLayer[];
  tags: string[];
  /** Wall-clock seconds per stage. */
  timings: { closure: number; layers: number; checks: number; output: number };
}

const NO_WHEELS: PreparedWheels = { layers: [], check: async () => ({ warnings: [], env: {} }) };

/** The mtime when SOURCE_DATE_EPOCH is not set: 1970-01-01T00:00:01Z, as nixpkgs' dockerTools uses. */
export const DEFAULT_SOURCE_DATE_EPOCH = 1;
export const DEFAULT_MAX_LAYERS = 100;
/** Size-aware grouping changes far fewer bytes when one store path changes (see plan-size-aware.ts). */
export const DEFAULT_LAYER_STRATEGY: PlanStrategy = 'size-aware';

/**
 * The build: read the closure, plan and write the store-path layers, install the wheels, add the
 * image-root layer, assemble config and manifest, write the output. Every check that can fail runs
 * before the output is started, and the output appears atomically, so a failed build leaves none.
 */
export async function buildImage(options: BuildImageOptions): Promise<BuildImageResult> {
  // The schema validator and the wheel readers load only when a build needs them (start-up time counts).
  const recipe = applyOverrides(options.recipe ? (await import('../recipe/load.js')).loadRecipe(options.recipe) : emptyRecipe(), options.overrides);
  const compression: Compression = options.compression ?? recipe.compression ?? 'gzip';
  const maxLayers = options.maxLayers ?? recipe.maxLayers ?? DEFAULT_MAX_LAYERS;
  if (!Number.isInteger(maxLayers) || maxLayers < 2) {
    throw new UserError(`--max-layers must be a whole number of at least 2, got ${maxLayers}`);
  }

  const jobs = options.jobs ?? availableParallelism();
  if (!Number.isInteger(jobs) || jobs < 1 || jobs > 256) throw new UserError(`--jobs must be a whole number from 1 to 256, got ${jobs}`);
  const settings: LayerSettings = { compression, gzipLevel: DEFAULT_GZIP_LEVEL, mtime: options.sourceDateEpoch };

  // With a cache, the build's work directory is inside it: cached blobs are hard-linked into the work
  // directory and new layers linked into the cache, which only works on one file system (a /tmp on
  // tmpfs would otherwise get a copy of every cached layer, in memory).
  const shared = options.cacheDir ? await CacheStore.open(options.cacheDir) : null;
  const work = shared ? await shared.makeBuildDir() : mkdtempSync(join(tmpdir(), 'nix2oci-build-'));
  const forget = removeOnExit(work);
  const clock = stopwatch();
  try {
    // Without a cache, layers go through a throwaway one: the same code path gives the same bytes.
    const store = shared ?? (await CacheStore.open(join(work, 'cache')));
    // --jobs bounds the layers being tarred and compressed at once (and the threads hashing); lookups
    // in the cache are not bounded by it: a warm build is many small reads waiting in parallel.
    const builds = pLimit(jobs);
    setHashThreads(jobs);
    const cache = new LayerCache(store, settings, work, (task) => builds(task));
    options.log(`reading ${options.closures.map((f) => (f === '-' ? 'stdin' : f)).join(', ')}`);
    let readBefore = 0;
    let sizeBefore = 0;
    let current = '';
    const closure: Closure = await loadClosure(options.closures, {
      pathInfoFile: options.pathInfo,
      tmpDir: work,
      memo: shared ? exportIndexMemo(shared) : undefined,
      onRecalled: (file) => options.log(`${file}: unchanged since it was last indexed; its index comes from the cache`),
      // Per file: add up across the files given.
      onProgress: (file, read, total) => {
        if (file !== current) {
          readBefore = sizeBefore;
          sizeBefore += total;
          current = file;
        }
        options.progress?.reading(readBefore + read, sizeBefore);
      },
    });
    options.log(`closure: ${closure.paths.size} store paths (roots: ${closure.roots.map(storeName).join(', ')})`);
    if (options.cacheDir) options.log(`layer cache: ${options.cacheDir}`);

    const resolved = resolveRecipe(recipe, closure, options.recipe);
    const wheelFiles = [...resolved.wheels, ...options.wheels];
    const wheels: PreparedWheels = wheelFiles.length === 0 ? NO_WHEELS : await (await import('./wheels.js')).prepareWheels({
      files: wheelFiles,
      closure,
      recipe: resolved,
      python: options.python,
      depsCheck: options.depsCheck,
      list: shared ? memoizedListing(shared, listNar, mattersToIndex) : undefined,
      wheelInfos: shared ? wheelInfoMemo(shared) : undefined,
    });

    const strategy = options.layerStrategy ?? recipe.layerStrategy ?? DEFAULT_LAYER_STRATEGY;
    const plan = planLayers(closure, { maxLayers, reserved: 1 + wheels.layers.length, strategy });
    const timings = { closure: clock.lap(), layers: 0, checks: 0, output: 0 };
    const total = plan.length + wheels.layers.length + 1;
    // About how many bytes of files each layer holds, for progress: a store path's NAR size, a wheel's installed size.
    const expected = [
      ...plan.map((group) => group.paths.reduce((n, path) => n + closure.paths.get(path)!.narSize, 0)),
      ...wheels.layers.map(installedSize),
      0,
    ];
    options.progress?.planned(total, expected.reduce((a, b) => a + b, 0));
    let finished = 0;
    const report = (index: number, layer: BuiltLayer, label: string) => {
      finished++;
      options.progress?.layerDone(index, layer, expected[index] ?? 0);
      options.log(
        `layer ${String(index + 1).padStart(3)}/${total} ${layer.reused ? 'reused' : 'built '} ${layer.blob.digest.slice(7, 19)} ` +
          `${formatBytes(layer.blob.uncompressedSize).padStart(9)} ${label} (${layer.seconds.toFixed(1)} s; ${finished}/${total} done)`,
      );
    };
    /** Reports a layer's file bytes as they are tarred; the first report says it is being made. */
    const counter = (index: number, label: string): ((bytes: number) => void) | undefined => {
      // Without a display, nothing counts: no wrapper around every file's bytes.
      const progress = options.progress;
      if (!progress) return undefined;
      let started = false;
      return (bytes: number) => {
        if (!started) {
          started = true;
          progress.layerStarted(index, label, expected[index] ?? 0);
        }
        progress.layerProgress(index, bytes);
      };
    };
    const timed = async (
      index: number,
      label: string,
      contents: string[],
      make: (onBytes: ((bytes: number) => void) | undefined) => Promise<{ blob: LayerBlob; reused: boolean }>,
    ) => {
      const started = performance.now();
      const { blob, reused } = await make(counter(index, label));
      const layer: BuiltLayer = { blob, contents, reused, seconds: (performance.now() - started) / 1000 };
      report(index, layer, label);
      return layer;
    };

    // Layers build concurrently, and --jobs also bounds how many 4 MiB parts compress at once across
    // them (so one huge layer still uses every core); results keep the plan's order.
    setLayerJobs(jobs);
    // After a failure no further layer starts; those running finish before the work directory goes.
    const pool = pLimit(Math.max(16, 4 * jobs));
    let failure: { error: unknown } | null = null;
    const limit = (task: () => Promise<BuiltLayer>) =>
      pool(async () => {
        if (failure) throw failure.error;
        try {
          return await task();
        } catch (error) {
          failure ??= { error };
          throw error;
        }
      });
    // Uncompressed layers without a cache are written straight through: the tar is the blob, so the bytes
    // are those a cache would compose, and one pass (hashed on the writer's thread) is all it takes.
    const direct = compression === 'none' && options.cacheDir === null;
    const writeDirect = async (infos: StorePathInfo[], onBytes: ((bytes: number) => void) | undefined) => ({
      blob: await builds(() => writeLayer(countingSource(storePathsSource(infos), onBytes), { compression, dir: work, mtime: options.sourceDateEpoch })),
      reused: false,
    });
    // The image-root layer is tiny and depends on the recipe: always rebuilt, alongside the others.
    const root = rootLayerSource(closure, { ...resolved.root, lowerLayerFiles: wheels.layers.flatMap((l) => l.piece.files) });
    const wheelFacts: WheelElfFacts[] = [];
    const makers: (() => Promise<BuiltLayer>)[] = [
      ...plan.map((group, i) => {
        const label = group.paths.length === 1 ? storeName(group.paths[0]!) : `${group.paths.length} store paths`;
        const infos = group.paths.map((path) => closure.paths.get(path)!);
        return () => timed(i, label, group.paths, (onBytes) => (direct ? writeDirect(infos, onBytes) : cache.storePathLayer(infos, onBytes)));
      }),
      ...wheels.layers.map(
        (wheel, i) => () =>
          timed(plan.length + i, wheel.contents.join(', '), wheel.contents, async (onBytes) => {
            const done = await cachedWheelLayer(cache, { ...wheel, source: countingSource(wheel.source, onBytes) }, settings, work);
            wheelFacts[i] = done.facts;
            return done;
          }),
      ),
      () =>
        timed(total - 1, 'image root', root.contents, async () => ({
          blob: await writeWholeLayer(root.source, settings, work),
          reused: false,
        })),
    ];
    // Let every started layer settle before failing, so none writes into a removed work directory.
    const settled = await Promise.allSettled(makers.map((make) => limit(make)));
    if (failure) throw (failure as { error: unknown }).error;
    const written = settled.map((r) => (r as PromiseFulfilledResult<BuiltLayer>).value);
    timings.layers = clock.lap();

    for (const w of root.warnings) options.warn(w);
    const checked = await wheels.check(wheelFacts);
    for (const w of checked.warnings) options.warn(w);
    timings.checks = clock.lap();

    const tags = options.tags.length > 0 ? options.tags : resolved.tags;
    const assemble = () =>
      assembleImage({
        layers: written,
        config: toImageConfigSpec(resolved, checked.env),
        created: new Date(options.sourceDateEpoch * 1000),
        tags,
        format: options.format,
      });
    let { image, warnings } = assemble();
    for (const w of warnings) options.warn(w);
    // Cached layers are checked as the output copies them. One found damaged is dropped from the cache,
    // made again, and the output written again (the failed attempt left nothing behind).
    for (let attempt = 1; ; attempt++) {
      try {
        await writeImage(image, { format: options.format, output: options.output });
        break;
      } catch (err) {
        if (!(err instanceof BlobCheckError) || attempt > 3 || !(await cache.drop(err.digest))) throw err;
        options.warn(`the layer cache's copy of ${err.digest} is damaged; it is built again (${err.message})`);
        for (const [i, layer] of written.entries()) if (layer.blob.digest === err.digest) written[i] = await makers[i]!();
        ({ image } = assemble());
      }
    }
    timings.output = clock.lap();
    return { image, manifestDigest: manifestDigest(image), layers: written, tags: image.tags, timings };
  } finally {
    options.stopProgress?.();
    forget();
    rmSync(work, { recursive: true, force: true });
  }
}

/**
 * A wheel's layer (its main layer, or a file split off) through the cache, with the library check's
 * inputs from the same pass. Cached facts are kept without the wheel's file (and a split-off file's
 * entry name), and given this plan's on the way out.
 */
async function cachedWheelLayer(cache: LayerCache, wheel: WheelLayerPlan, settings: LayerSettings, work: string) {
  const done = await cache.wholeLayer<WheelElfFacts>(wheelLayerKey(wheel.key, settings), async () => {
    const blob = await writeWholeLayer(wheel.source, settings, work);
    return { blob, facts: wheel.factsForCache(await wheel.elfFacts()) };
  });
  return { ...done, facts: wheel.factsFromCache(done.facts) };
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

function storeName(path: string): string {
  return path.replace(/^\/nix\/store\/[0-9a-z]{32}-/, '');
}

/** About how many bytes of files a wheel layer installs (a split-off file's size, or the rest of the wheel's). */
function installedSize(plan: WheelLayerPlan): number {
  if (plan.piece.split) return plan.piece.split.entry.size;
  const split = new Set(plan.layer.pieces.flatMap((p) => (p.split ? [p.split.entry.name] : [])));
  return plan.info.entries.reduce((n, e) => n + (e.isDir || split.has(e.name) ? 0 : e.size), 0);
}
