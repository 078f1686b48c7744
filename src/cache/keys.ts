import { createHash } from 'node:crypto';
import type { StorePathInfo } from '../nix/types.js';
import { CACHE_FORMAT_VERSION, compressionLevel, type LayerFormat } from '../layer/format.js';
import { byCodeUnits } from '../util/order.js';

function keyOf(kind: string, fields: unknown[]): string {
  return createHash('sha256')
    .update(JSON.stringify([kind, CACHE_FORMAT_VERSION, ...fields]))
    .digest('hex');
}

/** Compression and its level are in every key: a gzip layer is never served as zstd, nor a level as another. */
function settingsFields(s: LayerFormat): unknown[] {
  return [s.compression, compressionLevel(s), s.mtime];
}

/** A store path's part: its NAR hash fully determines its files, the path their names. */
export function storePathPartKey(info: Pick<StorePathInfo, 'path' | 'narHash'>, settings: LayerFormat): string {
  return keyOf('store-path-part', [info.path, info.narHash, ...settingsFields(settings)]);
}

/** A layer composed of parts, in order: same parts, same layer. */
export function composedLayerKey(partKeys: string[], settings: LayerFormat): string {
  return keyOf('composed-layer', [partKeys, ...settingsFields(settings)]);
}

/** The layer of these store paths (in any order): composed of their parts, in path order. */
export function storePathsLayerKey(infos: Pick<StorePathInfo, 'path' | 'narHash'>[], settings: LayerFormat): string {
  const sorted = [...infos].sort((a, b) => byCodeUnits(a.path, b.path));
  return composedLayerKey(sorted.map((info) => storePathPartKey(info, settings)), settings);
}

/** The image-root layer, by the sha256 of its tar (tiny, made in memory to be keyed): same tar, same layer. */
export function imageRootLayerKey(tarSha256: string, settings: LayerFormat): string {
  return keyOf('image-root', [tarSha256, ...settingsFields(settings)]);
}

/**
 * What decides a wheel layer's bytes (besides the settings). The main layer: the wheel's bytes and name,
 * where and for which Python it installs, and the split threshold (which files it leaves out). A file
 * split off into its own layer: only its content (RECORD's hash, checked as it is written), size, path in
 * the layer and mode — so the same library in another wheel, or another build of the wheel, is a hit.
 */
export type WheelKeyInputs =
  | { piece: 'main'; sha256: string; fileName: string; prefix: string; interpreter: string; pythonVersion: string; splitThreshold: number }
  | { piece: 'file'; content: string; size: number; path: string; mode: number };

export function wheelLayerKey(wheel: WheelKeyInputs, settings: LayerFormat): string {
  if (wheel.piece === 'file') return keyOf('wheel-file-layer', [wheel.content, wheel.size, wheel.path, wheel.mode, ...settingsFields(settings)]);
  const { sha256, fileName, prefix, interpreter, pythonVersion, splitThreshold } = wheel;
  return keyOf('wheel-layer', [sha256, fileName, prefix, interpreter, pythonVersion, splitThreshold, ...settingsFields(settings)]);
}

/** A slice of a store path cut by `--max-layer-size`: the path's NAR hash and the slice's nodes decide its bytes. */
export function storePathSliceLayerKey(info: Pick<StorePathInfo, 'path' | 'narHash'>, slice: { from: number; to: number }, settings: LayerFormat): string {
  return keyOf('store-path-slice-layer', [info.path, info.narHash, slice.from, slice.to, ...settingsFields(settings)]);
}

/** What was read from an input file (`kind`: export-index, wheel-info), by the file's identity. */
export function inputMemoKey(kind: string, identity: string): string {
  return keyOf('input', [kind, identity]);
}

/** A store path's listing for the wheel checks: its NAR hash decides its files. */
export function narListingKey(info: Pick<StorePathInfo, 'path' | 'narHash'>): string {
  return keyOf('nar-listing', [info.path, info.narHash]);
}
