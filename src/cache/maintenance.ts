import { readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { CacheStore, ENTRY_KINDS, entryValue, isDigest, isRecord, type EntryKind } from './store.js';

/** A temp file or unreferenced blob younger than this may belong to a build still running. */
export const GRACE_MS = 60 * 60 * 1000;

export interface CacheStats {
  dir: string;
  /** Entries by kind: store-path parts, composed layers, wheel layers. */
  entries: Record<EntryKind, number>;
  blobs: number;
  /** Bytes of all blobs (what pruning counts). */
  bytes: number;
  /** Blobs no entry names (left by an interrupted build, or by a prune racing a build). */
  unreferencedBlobs: number;
  tempFiles: number;
  /** Last use of the least and most recently used entry, or null when empty. */
  oldestUse: Date | null;
  newestUse: Date | null;
}

interface EntryFile {
  kind: EntryKind;
  key: string;
  path: string;
  used: number;
  /** The blob the entry owns (parts, wheels). */
  digest: string | null;
  /** The part blobs a composed layer's entry is made of. */
  parts: string[];
  /** The layer digest a layer, wheel or measurement entry gives. */
  layer: string | null;
}

interface Inventory {
  store: CacheStore;
  entries: EntryFile[];
  blobs: Map<string, { path: string; size: number; mtime: number }>;
  temps: { path: string; mtime: number }[];
}

async function inventory(dir: string): Promise<Inventory> {
  const store = await CacheStore.open(dir);
  const entries: EntryFile[] = [];
  for (const kind of ENTRY_KINDS) {
    for (const name of await readdir(join(store.root, kind))) {
      if (!name.endsWith('.json')) continue;
      const path = join(store.root, kind, name);
      const info = await stat(path).catch(() => null);
      if (!info) continue;
      const value: unknown = await readFile(path, 'utf8').then(entryValue, () => null);
      // A part's bytes may lie inside a layer's blob (`blob`); that blob is the one it holds.
      const held = isRecord(value) ? (value.blob ?? value.digest) : null;
      const digest = kind !== 'layers' && kind !== 'verified' && isDigest(held) ? held : null;
      const parts = kind === 'layers' && isRecord(value) && Array.isArray(value.parts) ? value.parts.filter(isDigest) : [];
      const layer = isRecord(value) && isDigest(value.digest) ? value.digest : null;
      entries.push({ kind, key: name.slice(0, -5), path, used: info.mtimeMs, digest, parts, layer });
    }
  }
  const blobs = new Map<string, { path: string; size: number; mtime: number }>();
  for (const name of await readdir(join(store.root, 'blobs'))) {
    const path = join(store.root, 'blobs', name);
    const info = await stat(path).catch(() => null);
    if (info?.isFile()) blobs.set(`sha256:${name}`, { path, size: info.size, mtime: info.mtimeMs });
  }
  const temps: { path: string; mtime: number }[] = [];
  for (const name of await readdir(join(store.root, 'tmp'))) {
    const path = join(store.root, 'tmp', name);
    const info = await stat(path).catch(() => null);
    if (info) temps.push({ path, mtime: info.mtimeMs });
  }
  return { store, entries, blobs, temps };
}

export async function cacheStats(dir: string): Promise<CacheStats> {
  const inv = await inventory(dir);
  const referenced = new Set(inv.entries.map((e) => e.digest).filter((d) => d !== null));
  const uses = inv.entries.map((e) => e.used);
  const count = (kind: EntryKind) => inv.entries.filter((e) => e.kind === kind).length;
  return {
    dir,
    entries: { parts: count('parts'), layers: count('layers'), wheels: count('wheels'), inputs: count('inputs'), listings: count('listings'), verified: count('verified') },
    blobs: inv.blobs.size,
    bytes: [...inv.blobs.values()].reduce((n, b) => n + b.size, 0),
    unreferencedBlobs: [...inv.blobs.keys()].filter((d) => !referenced.has(d)).length,
    tempFiles: inv.temps.length,
    oldestUse: uses.length > 0 ? new Date(Math.min(...uses)) : null,
    newestUse: uses.length > 0 ? new Date(Math.max(...uses)) : null,
  };
}

export interface PruneResult {
  removedEntries: number;
  removedBlobs: number;
  freedBytes: number;
  /** Bytes of blobs left. */
  bytes: number;
}

/**
 * Shrinks the cache to at most `maxBytes` of blobs, evicting the least recently used entries first.
 * What killed builds left goes first ({@link CacheStore.sweep}), then unreferenced blobs older than
 * {@link GRACE_MS} (younger ones may be a running build's). Safe beside running builds: a build that
 * finds a blob gone rebuilds it.
 */
export async function pruneCache(dir: string, maxBytes: number, now = Date.now()): Promise<PruneResult> {
  const inv = await inventory(dir);
  await inv.store.sweep(now);

  const holders = new Map<string, number>();
  for (const e of inv.entries) if (e.digest) holders.set(e.digest, (holders.get(e.digest) ?? 0) + 1);
  let bytes = [...inv.blobs.values()].reduce((n, b) => n + b.size, 0);
  const result: PruneResult = { removedEntries: 0, removedBlobs: 0, freedBytes: 0, bytes };
  const dropBlob = async (digest: string) => {
    const blob = inv.blobs.get(digest);
    if (!blob) return;
    await rm(blob.path, { force: true });
    inv.blobs.delete(digest);
    bytes -= blob.size;
    result.freedBytes += blob.size;
    result.removedBlobs++;
  };

  for (const [digest, blob] of [...inv.blobs]) {
    if (!holders.has(digest) && now - blob.mtime > GRACE_MS) await dropBlob(digest);
  }
  const byAge = [...inv.entries].sort((a, b) => a.used - b.used || (a.path < b.path ? -1 : 1));
  const removed = new Set<EntryFile>();
  for (const entry of byAge) {
    // Size 0 empties the cache: entries without a blob (inputs' memos, listings) weigh nothing, but go too.
    if (bytes <= maxBytes && maxBytes > 0) break;
    await rm(entry.path, { force: true });
    removed.add(entry);
    if (!entry.digest) continue;
    const left = holders.get(entry.digest)! - 1;
    holders.set(entry.digest, left);
    if (left === 0) await dropBlob(entry.digest);
  }
  // A composed layer's entry is worth nothing once one of its parts is gone.
  for (const entry of inv.entries) {
    if (entry.kind === 'layers' && !removed.has(entry) && entry.parts.some((d) => !inv.blobs.has(d))) {
      await rm(entry.path, { force: true });
      removed.add(entry);
    }
  }
  // A measurement is worth nothing once no layer entry gives its digest.
  const layers = new Set(inv.entries.filter((e) => !removed.has(e) && (e.kind === 'layers' || e.kind === 'wheels')).map((e) => e.layer));
  for (const entry of inv.entries) {
    if (entry.kind === 'verified' && !removed.has(entry) && !layers.has(entry.layer)) {
      await rm(entry.path, { force: true });
      removed.add(entry);
    }
  }
  result.removedEntries = removed.size;
  result.bytes = bytes;
  return result;
}


