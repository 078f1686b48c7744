import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadClosure } from '../nix/closure.js';
import type { Closure } from '../nix/types.js';
import { planLayers } from '../layers/plan.js';
import { storePathsSource } from '../layers/store-path-source.js';
import { writeLayer } from '../layers/write-layer.js';
import type { Compression, LayerBlob, LayerSource } from '../layers/types.js';
import { emptyRecipe, loadRecipe } from '../recipe/load.js';
import { applyOverrides, type RecipeOverrides } from '../recipe/overrides.js';
import { resolveRecipe, toImageConfigSpec } from '../recipe/resolve.js';
import { rootLayerSource } from '../rootfs/root-layer.js';
import { assembleImage, manifestDigest } from '../oci/assemble.js';
import { writeImage, type OutputFormat } from '../oci/write.js';
import type { Image } from '../oci/image.js';
import { formatBytes } from '../oci/inspect.js';
import { removeOnExit } from '../util/cleanup.js';
import { UserError } from '../util/errors.js';
import { prepareWheels } from './wheels.js';

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
  /** Seconds since the epoch for every mtime and the config's `created`. */
  sourceDateEpoch: number;
  log: (line: string) => void;
  warn: (line: string) => void;
}

export interface BuiltLayer {
  blob: LayerBlob;
  contents: string[];
}

export interface BuildImageResult {
  image: Image;
  manifestDigest: string;
  layers: BuiltLayer[];
  tags: string[];
}

/** The mtime when SOURCE_DATE_EPOCH is not set: 1970-01-01T00:00:01Z, as nixpkgs' dockerTools uses. */
export const DEFAULT_SOURCE_DATE_EPOCH = 1;
export const DEFAULT_MAX_LAYERS = 100;

/**
 * The build: read the closure, plan and write the store-path layers, install the wheels, add the
 * image-root layer, assemble config and manifest, write the output. Every check that can fail runs
 * before the output is started, and the output appears atomically, so a failed build leaves none.
 */
export async function buildImage(options: BuildImageOptions): Promise<BuildImageResult> {
  const recipe = applyOverrides(options.recipe ? loadRecipe(options.recipe) : emptyRecipe(), options.overrides);
  const compression: Compression = options.compression ?? recipe.compression ?? 'gzip';
  const maxLayers = options.maxLayers ?? recipe.maxLayers ?? DEFAULT_MAX_LAYERS;
  if (!Number.isInteger(maxLayers) || maxLayers < 2) {
    throw new UserError(`--max-layers must be a whole number of at least 2, got ${maxLayers}`);
  }

  const work = mkdtempSync(join(tmpdir(), 'nix2oci-build-'));
  const forget = removeOnExit(work);
  try {
    options.log(`reading ${options.closures.map((f) => (f === '-' ? 'stdin' : f)).join(', ')}`);
    const closure: Closure = await loadClosure(options.closures, { pathInfoFile: options.pathInfo, tmpDir: work });
    options.log(`closure: ${closure.paths.size} store paths (roots: ${closure.roots.map(storeName).join(', ')})`);

    const resolved = resolveRecipe(recipe, closure, options.recipe);
    const wheels = await prepareWheels({
      files: [...resolved.wheels, ...options.wheels],
      closure,
      recipe: resolved,
      python: options.python,
      depsCheck: options.depsCheck,
    });

    const plan = planLayers(closure, { maxLayers, reserved: 1 + wheels.layers.length });
    const written: BuiltLayer[] = [];
    const write = async (source: LayerSource, contents: string[], label: string) => {
      const blob = await writeLayer(source, { compression, dir: work, mtime: options.sourceDateEpoch });
      written.push({ blob, contents });
      options.log(`layer ${String(written.length).padStart(3)}: ${blob.digest.slice(7, 19)} ${formatBytes(blob.uncompressedSize).padStart(9)} ${label}`);
    };
    for (const group of plan) {
      const infos = group.paths.map((path) => closure.paths.get(path)!);
      const label = group.paths.length === 1 ? storeName(group.paths[0]!) : `${group.paths.length} store paths`;
      await write(storePathsSource(infos), group.paths, label);
    }
    for (const wheel of wheels.layers) await write(wheel.source, wheel.contents, wheel.contents.join(', '));
    const checked = await wheels.check();
    for (const w of checked.warnings) options.warn(w);

    const root = rootLayerSource(closure, resolved.root);
    await write(root.source, root.contents, 'image root');
    for (const w of root.warnings) options.warn(w);

    const tags = options.tags.length > 0 ? options.tags : resolved.tags;
    const { image, warnings } = assembleImage({
      layers: written,
      config: toImageConfigSpec(resolved, checked.env),
      created: new Date(options.sourceDateEpoch * 1000),
      tags,
      format: options.format,
    });
    for (const w of warnings) options.warn(w);
    await writeImage(image, { format: options.format, output: options.output });
    return { image, manifestDigest: manifestDigest(image), layers: written, tags: image.tags };
  } finally {
    forget();
    rmSync(work, { recursive: true, force: true });
  }
}

function storeName(path: string): string {
  return path.replace(/^\/nix\/store\/[0-9a-z]{32}-/, '');
}
