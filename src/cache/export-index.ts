import type { IndexMemo, RememberedPath } from '../nix/closure.js';
import { exportIndexKey } from './keys.js';
import { isRecord, isSize, type CacheStore } from './store.js';

const isHex = (v: unknown): v is string => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v);
const isRemembered = (v: unknown): v is RememberedPath =>
  isRecord(v) &&
  typeof v.path === 'string' &&
  Array.isArray(v.references) &&
  v.references.every((r) => typeof r === 'string') &&
  (v.deriver === null || typeof v.deriver === 'string') &&
  isHex(v.narHash) &&
  isSize(v.narSize) &&
  isSize(v.offset);
const isIndex = (v: unknown): v is { paths: RememberedPath[] } => isRecord(v) && Array.isArray(v.paths) && v.paths.every(isRemembered);

/** Export files' indexes kept in the layer cache, so an unchanged closure file is not hashed again. */
export function exportIndexMemo(store: CacheStore): IndexMemo {
  return {
    async recall(identity) {
      const key = exportIndexKey(identity);
      const entry = await store.readEntry('exports', key, isIndex);
      if (entry) await store.touch('exports', key);
      return entry?.paths ?? null;
    },
    async remember(identity, paths) {
      await store.writeEntry('exports', exportIndexKey(identity), { paths });
    },
  };
}
