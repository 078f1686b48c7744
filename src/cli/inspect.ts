import type { Compression, Image } from '../model/image.js';
import { MediaTypes } from '../model/image.js';
import { scanLayer } from '../layer/scan.js';
import { sha256Digest } from '../model/manifest.js';
import { formatBytes } from '../util/units.js';

export interface LayerDescription {
  digest: string;
  mediaType: string;
  /** Bytes as stored (compressed). */
  size: number;
  /** gzip, zstd or none, as the media type says. */
  compression: Compression;
  /** Bytes of the uncompressed tar, when known. */
  uncompressedSize?: number;
  diffId: string;
  /** Store paths (or wheel names, `image-root`) the layer holds. */
  contents: string[];
  /** Where `contents` came from: the manifest's annotation, or reading the layer. */
  contentsFrom: 'annotation' | 'scan' | 'unknown';
  /** First path components, when the layer was read (shows what a layer without store paths holds). */
  topLevel?: string[];
  /** Something wrong found while reading the layer, e.g. a diffID that does not match. */
  problems?: string[];
}

export interface ImageDescription {
  manifestDigest: string;
  manifestMediaType: string;
  tags: string[];
  config: {
    digest: string;
    created?: string;
    architecture?: string;
    os?: string;
    variant?: string;
    user?: string;
    entrypoint?: string[];
    cmd?: string[];
    env: string[];
    workingDir?: string;
    exposedPorts: string[];
    volumes: string[];
    labels: Record<string, string>;
    stopSignal?: string;
    healthcheck?: { test: string[]; interval?: number; timeout?: number; startPeriod?: number; retries?: number };
  };
  layers: LayerDescription[];
  /** Sum of the layers' stored sizes. */
  size: number;
  /** Sum of the layers' uncompressed sizes, when all are known. */
  uncompressedSize?: number;
}

export interface DescribeOptions {
  /**
   * Read layers whose contents or uncompressed size the manifest does not record (default true).
   * Reading streams and decompresses the whole layer, once.
   */
  scan?: boolean;
}

/** What `inspect` shows; `--json` prints this object as it is. */
export async function describeImage(image: Image, options: DescribeOptions = {}): Promise<ImageDescription> {
  const scan = options.scan ?? true;
  const layers: LayerDescription[] = [];
  for (const [i, layer] of image.layers.entries()) {
    const d = layer.descriptor;
    const described: LayerDescription = {
      digest: d.digest,
      mediaType: d.mediaType,
      size: d.size,
      compression: layer.compression,
      ...(layer.uncompressedSize !== undefined && { uncompressedSize: layer.uncompressedSize }),
      diffId: layer.diffId,
      contents: layer.contents,
      contentsFrom: layer.contents.length > 0 ? 'annotation' : 'unknown',
    };
    if (scan && (layer.contents.length === 0 || layer.uncompressedSize === undefined)) {
      const result = await scanLayer(layer.open(), `layer ${i + 1} (${d.digest})`).catch((err: Error) => err);
      if (result instanceof Error) {
        described.problems = [result.message];
      } else {
        described.uncompressedSize = result.uncompressedSize;
        if (layer.contents.length === 0) {
          described.contents = result.storePaths;
          described.contentsFrom = 'scan';
        }
        described.topLevel = result.topLevel;
        if (result.diffId !== layer.diffId) {
          described.problems = [`the uncompressed layer's digest is ${result.diffId}, but the config says ${layer.diffId}`];
        }
      }
    }
    layers.push(described);
  }
  const uncompressed = layers.every((l) => l.uncompressedSize !== undefined)
    ? layers.reduce((sum, l) => sum + l.uncompressedSize!, 0)
    : undefined;
  return {
    manifestDigest: sha256Digest(image.manifestBytes),
    manifestMediaType: image.manifestMediaType,
    tags: image.tags,
    config: summarizeConfig(image.configBytes, image.configDescriptor.digest),
    layers,
    size: layers.reduce((sum, l) => sum + l.size, 0),
    ...(uncompressed !== undefined && { uncompressedSize: uncompressed }),
  };
}

interface RawConfig {
  created?: string;
  architecture?: string;
  os?: string;
  variant?: string;
  config?: {
    User?: string;
    Entrypoint?: string[] | null;
    Cmd?: string[] | null;
    Env?: string[] | null;
    WorkingDir?: string;
    ExposedPorts?: Record<string, unknown> | null;
    Volumes?: Record<string, unknown> | null;
    Labels?: Record<string, string> | null;
    StopSignal?: string;
    Healthcheck?: { Test?: string[]; Interval?: number; Timeout?: number; StartPeriod?: number; Retries?: number };
  };
}

function summarizeConfig(bytes: Buffer, digest: string): ImageDescription['config'] {
  let raw: RawConfig = {};
  try {
    raw = JSON.parse(bytes.toString('utf8')) as RawConfig;
  } catch {
    // readImage has already refused configs that are not JSON; an Image built by hand may still be odd.
  }
  const c = raw.config ?? {};
  const health = c.Healthcheck;
  return {
    digest,
    ...(raw.created !== undefined && { created: raw.created }),
    ...(raw.architecture !== undefined && { architecture: raw.architecture }),
    ...(raw.os !== undefined && { os: raw.os }),
    ...(raw.variant !== undefined && { variant: raw.variant }),
    ...(c.User && { user: c.User }),
    ...(c.Entrypoint && { entrypoint: c.Entrypoint }),
    ...(c.Cmd && { cmd: c.Cmd }),
    env: c.Env ?? [],
    ...(c.WorkingDir && { workingDir: c.WorkingDir }),
    exposedPorts: Object.keys(c.ExposedPorts ?? {}),
    volumes: Object.keys(c.Volumes ?? {}),
    labels: c.Labels ?? {},
    ...(c.StopSignal && { stopSignal: c.StopSignal }),
    ...(health?.Test && {
      healthcheck: {
        test: health.Test,
        ...(health.Interval !== undefined && { interval: health.Interval }),
        ...(health.Timeout !== undefined && { timeout: health.Timeout }),
        ...(health.StartPeriod !== undefined && { startPeriod: health.StartPeriod }),
        ...(health.Retries !== undefined && { retries: health.Retries }),
      },
    }),
  };
}

/** The human-readable `inspect` output. */
export function formatImageDescription(d: ImageDescription): string {
  const lines: string[] = [];
  const row = (label: string, value: string) => lines.push(`${label.padEnd(12)}${value}`);
  row('Image', `${d.manifestDigest}  (${shortMediaType(d.manifestMediaType)})`);
  row('Tags', d.tags.length > 0 ? d.tags.join(', ') : '(none)');
  const platform = [d.config.os, d.config.architecture, d.config.variant].filter(Boolean).join('/');
  row('Config', `${d.config.digest}  ${platform}${d.config.created ? `  created ${d.config.created}` : ''}`);
  if (d.config.entrypoint) row('Entrypoint', JSON.stringify(d.config.entrypoint));
  if (d.config.cmd) row('Cmd', JSON.stringify(d.config.cmd));
  d.config.env.forEach((e, i) => row(i === 0 ? 'Env' : '', e));
  if (d.config.workingDir) row('WorkingDir', d.config.workingDir);
  if (d.config.user) row('User', d.config.user);
  if (d.config.exposedPorts.length > 0) row('Ports', d.config.exposedPorts.join(', '));
  if (d.config.volumes.length > 0) row('Volumes', d.config.volumes.join(', '));
  Object.entries(d.config.labels).forEach(([k, v], i) => row(i === 0 ? 'Labels' : '', `${k}=${v}`));
  if (d.config.stopSignal) row('StopSignal', d.config.stopSignal);
  if (d.config.healthcheck) row('Healthcheck', JSON.stringify(d.config.healthcheck.test));

  const total = `${formatBytes(d.size)}${d.uncompressedSize !== undefined ? `, ${formatBytes(d.uncompressedSize)} uncompressed` : ''}`;
  lines.push('', `Layers: ${d.layers.length} (${total})`);
  const width = String(d.layers.length).length;
  d.layers.forEach((layer, i) => {
    const indent = ' '.repeat(width + 4);
    const sizes = `${formatBytes(layer.size)}${
      layer.uncompressedSize !== undefined && layer.uncompressedSize !== layer.size
        ? ` (${formatBytes(layer.uncompressedSize)} uncompressed)`
        : ''
    }`;
    lines.push(`  ${String(i + 1).padStart(width)}  ${layer.digest}  ${layer.compression}  ${sizes}`);
    lines.push(`${indent}diffID ${layer.diffId}`);
    if (layer.contents.length > 0) {
      for (const item of layer.contents) lines.push(`${indent}${item}`);
    } else if (layer.topLevel && layer.topLevel.length > 0) {
      lines.push(`${indent}(no store paths; top level: ${layer.topLevel.join(', ')})`);
    } else {
      lines.push(`${indent}(contents unknown)`);
    }
    for (const problem of layer.problems ?? []) lines.push(`${indent}warning: ${problem}`);
  });
  return `${lines.join('\n')}\n`;
}

function shortMediaType(mediaType: string): string {
  if (mediaType === MediaTypes.ociManifest) return 'OCI manifest';
  if (mediaType === MediaTypes.dockerManifest) return 'Docker schema 2 manifest';
  return mediaType;
}
