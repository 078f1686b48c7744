/**
 * A wheel as an image layer: write the installed tree with the layer writer, and the environment
 * that makes installed wheels importable and their scripts runnable.
 */
import { basename } from 'node:path';
import { writeLayer, type WriteLayerOptions } from '../layers/write-layer.js';
import type { LayerFile } from '../layers/types.js';
import { wheelLayerSource, type WheelInstallOptions } from './install.js';
import type { WheelInfo } from './wheel-info.js';

export interface WrittenWheelLayer {
  blob: LayerFile;
  /** What the layer holds, for `inspect`: the wheel's file name. */
  contents: string[];
  sitePackages: string;
  binDir: string;
}

/** Installs one wheel into one layer (one pass over the wheel: verified as it is written). */
export async function writeWheelLayer(info: WheelInfo, install: WheelInstallOptions, write: WriteLayerOptions): Promise<WrittenWheelLayer> {
  const layer = wheelLayerSource(info, install);
  const blob = await writeLayer(layer.source, write);
  return { blob, contents: [basename(info.file)], sitePackages: layer.sitePackages, binDir: layer.binDir };
}

/** The PATH container runtimes use when an image sets none (Docker's and containerd's default). */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/**
 * The image env with wheels' directories merged in: each site-packages appended to PYTHONPATH after
 * the recipe's own entries (the recipe's paths win), each bin directory put first on PATH (so a wheel's
 * console scripts are found). Entries already present are not repeated; other variables are kept.
 */
export function wheelEnv(env: Readonly<Record<string, string>>, layers: readonly { sitePackages: string; binDir: string }[]): Record<string, string> {
  if (layers.length === 0) return { ...env };
  const split = (value: string | undefined) => (value ? value.split(':').filter((p) => p !== '') : []);
  const pythonPath = split(env.PYTHONPATH);
  for (const { sitePackages } of layers) if (!pythonPath.includes(sitePackages)) pythonPath.push(sitePackages);
  const binDirs = [...new Set(layers.map((l) => l.binDir))];
  const rest = split(env.PATH ?? DEFAULT_PATH).filter((p) => !binDirs.includes(p));
  return { ...env, PYTHONPATH: pythonPath.join(':'), PATH: [...binDirs, ...rest].join(':') };
}
