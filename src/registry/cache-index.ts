import { byCodeUnits } from '../util/order.js';

/**
 * The registry cache's index: layer-cache keys (src/cache/keys.ts) to the layer each made, kept in the
 * registry as an OCI artifact beside the images (`REPO:nix2oci-cache`), so a runner with an empty local
 * cache can skip every layer whose key it computes and whose blob the registry holds.
 *
 *   { "schemaVersion": 1, "entries": { "<key: 64 hex>": { digest, diffId, size, uncompressedSize, mediaType, pushed, facts? } } }
 *
 * The index is only a hint: a build uses an entry only when the registry has a blob of that digest and
 * size, and takes the layer's diffID from it only then. Anything malformed makes the whole index
 * ignored (with one warning); its entries are then not merged either.
 */
export const CACHE_INDEX_ARTIFACT_TYPE = 'application/vnd.nix2oci.layer-cache.v1+json';
export const CACHE_INDEX_MEDIA_TYPE = 'application/vnd.nix2oci.layer-cache.index.v1+json';
export const DEFAULT_CACHE_TAG = 'nix2oci-cache';
/** An index larger than this is not read (about 150 000 entries without facts). */
export const MAX_INDEX_BYTES = 64 << 20;
/** Entries kept when merging: this build's, then the most recently pushed of the others. */
export const MAX_INDEX_ENTRIES = 20_000;

export interface CacheIndexEntry {
  digest: string;
  diffId: string;
  size: number;
  uncompressedSize: number;
  mediaType: string;
  /** The day (UTC, YYYY-MM-DD) a build last pushed this entry: merging keeps the most recent. */
  pushed: string;
  /** What the build keeps beside a wheel's layer (the library check's facts), as the local cache does. */
  facts?: unknown;
}

export type CacheIndex = Map<string, CacheIndexEntry>;

const KEY = /^[0-9a-f]{64}$/;
const DIGEST = /^sha256:[0-9a-f]{64}$/;
const DAY = /^\d{4}-\d\d-\d\d$/;
const LAYER_MEDIA_TYPE = /^application\/vnd\.oci\.image\.layer\.v1\.tar(\+gzip|\+zstd)?$/;
const isSize = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/**
 * The index in `bytes`, or why it cannot be used (one line). `factsValid` judges an entry's facts
 * (the registry's contents are not trusted: a bad shape would break the checks that read them).
 */
export function parseCacheIndex(bytes: Buffer, factsValid: (facts: unknown) => boolean): { index: CacheIndex } | { problem: string } {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    return { problem: 'it is not JSON' };
  }
  const d = doc as { schemaVersion?: unknown; entries?: unknown };
  if (typeof doc !== 'object' || doc === null || d.schemaVersion !== 1) return { problem: 'it is not a schemaVersion 1 index' };
  if (typeof d.entries !== 'object' || d.entries === null || Array.isArray(d.entries)) return { problem: 'it has no entries object' };
  const index: CacheIndex = new Map();
  for (const [key, value] of Object.entries(d.entries as Record<string, unknown>)) {
    if (!KEY.test(key)) return { problem: `key ${JSON.stringify(key.slice(0, 80))} is not 64 hex digits` };
    const e = value as Partial<CacheIndexEntry> | null;
    const valid =
      typeof e === 'object' && e !== null &&
      typeof e.digest === 'string' && DIGEST.test(e.digest) &&
      typeof e.diffId === 'string' && DIGEST.test(e.diffId) &&
      isSize(e.size) && isSize(e.uncompressedSize) &&
      typeof e.mediaType === 'string' && LAYER_MEDIA_TYPE.test(e.mediaType) &&
      typeof e.pushed === 'string' && DAY.test(e.pushed) &&
      (e.facts === undefined || factsValid(e.facts));
    if (!valid) return { problem: `the entry of key ${key} is malformed` };
    index.set(key, { digest: e.digest!, diffId: e.diffId!, size: e.size!, uncompressedSize: e.uncompressedSize!, mediaType: e.mediaType!, pushed: e.pushed!, ...(e.facts !== undefined && { facts: e.facts }) });
  }
  return { index };
}

/**
 * This build's entries over what the registry held (entries of other images kept), at most `limit`:
 * this build's always, then the others most recently pushed first.
 */
export function mergeCacheIndex(held: CacheIndex, ours: CacheIndex, limit = MAX_INDEX_ENTRIES): CacheIndex {
  const others = [...held].filter(([key]) => !ours.has(key));
  others.sort(([ka, a], [kb, b]) => byCodeUnits(b.pushed, a.pushed) || byCodeUnits(ka, kb));
  return new Map([...ours, ...others.slice(0, Math.max(0, limit - ours.size))]);
}

/** Whether `index` has every entry of `ours` as this build would write it (same blob, same day, facts or none). */
export function holdsEntries(index: CacheIndex, ours: CacheIndex): boolean {
  return [...ours].every(([key, entry]) => {
    const held = index.get(key);
    return held !== undefined && held.digest === entry.digest && held.pushed === entry.pushed && (held.facts === undefined) === (entry.facts === undefined);
  });
}

/** The index as stored: keys sorted, fields in a fixed order, so the same index is the same bytes. */
export function serializeCacheIndex(index: CacheIndex): Buffer {
  const entries: Record<string, CacheIndexEntry> = {};
  for (const key of [...index.keys()].sort(byCodeUnits)) {
    const e = index.get(key)!;
    entries[key] = { digest: e.digest, diffId: e.diffId, size: e.size, uncompressedSize: e.uncompressedSize, mediaType: e.mediaType, pushed: e.pushed, ...(e.facts !== undefined && { facts: e.facts }) };
  }
  return Buffer.from(JSON.stringify({ schemaVersion: 1, entries }));
}
