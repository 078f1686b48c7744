import type { IndexMemo, RememberedPath } from '../nix/closure.js';
import type { WheelInfo } from '../wheels/wheel-info.js';
import type { InputMemo } from '../util/file-identity.js';
import { inputMemoKey } from './keys.js';
import { isRecord, isSize, type CacheStore } from './store.js';
import { isListedNodes } from './listing-memo.js';

/**
 * What was read from input files (export indexes, wheels' metadata and sha256), kept in the cache by
 * the file's identity (src/util/file-identity.ts), so an unchanged closure or wheel is not read and
 * hashed again. Entries carry their own checksum (see CacheStore) and are checked for shape here.
 */
function inputMemo<T>(store: CacheStore, kind: string, valid: (value: unknown) => value is T): InputMemo<T> {
  return {
    async recall(identity) {
      const key = inputMemoKey(kind, identity);
      const entry = await store.readEntry('inputs', key, (v): v is { value: T } => isRecord(v) && valid(v.value));
      if (entry) await store.touch('inputs', key);
      return entry?.value ?? null;
    },
    async remember(identity, value) {
      // Only a later build reads it: written when the store is flushed (the value is not changed meanwhile).
      store.writeLater('inputs', inputMemoKey(kind, identity), { value });
    },
  };
}

const isHex = (v: unknown): v is string => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v);
const isRemembered = (v: unknown): v is RememberedPath =>
  isRecord(v) &&
  typeof v.path === 'string' &&
  Array.isArray(v.references) &&
  v.references.every((r) => typeof r === 'string') &&
  (v.deriver === null || typeof v.deriver === 'string') &&
  isHex(v.narHash) &&
  isSize(v.narSize) &&
  isSize(v.offset) &&
  (v.listing === undefined || isListedNodes(v.listing));

export function exportIndexMemo(store: CacheStore): IndexMemo {
  return inputMemo(store, 'export-index', (v): v is RememberedPath[] => Array.isArray(v) && v.every(isRemembered));
}

/** A wheel's info (the caller sets `file` to the name the wheel is given by now). */
export function wheelInfoMemo(store: CacheStore): InputMemo<WheelInfo> {
  return inputMemo(store, 'wheel-info', (v): v is WheelInfo => isRecord(v) && isHex(v.sha256) && isSize(v.fileSize) && Array.isArray(v.entries));
}
