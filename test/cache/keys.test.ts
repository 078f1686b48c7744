import { describe, it, expect } from 'vitest';
import { createHash } from 'node:crypto';
import { composedLayerKey, storePathPartKey, storePathSliceLayerKey, wheelLayerKey } from '../../src/cache/keys.js';
import { CACHE_FORMAT_VERSION, type LayerFormat } from '../../src/layer/format.js';

const info = { path: '/nix/store/00000000000000000000000000000000-a', narHash: 'sha256:' + '1'.repeat(64) };
const gzip: LayerFormat = { compression: 'gzip', gzipLevel: 6, mtime: 1 };

describe('cache keys', () => {
  it('keep every gzip and none key as before zstd came (existing caches still hit)', () => {
    const old = (kind: string, fields: unknown[]) => createHash('sha256').update(JSON.stringify([kind, CACHE_FORMAT_VERSION, ...fields])).digest('hex');
    expect(storePathPartKey(info, gzip)).toBe(old('store-path-part', [info.path, info.narHash, 'gzip', 6, 1]));
    expect(storePathPartKey(info, { compression: 'none', gzipLevel: 6, mtime: 1 })).toBe(old('store-path-part', [info.path, info.narHash, 'none', 0, 1]));
  });

  it('never serve a layer of one compression or level as another', () => {
    const formats: LayerFormat[] = [
      gzip,
      { ...gzip, gzipLevel: 9 },
      { compression: 'zstd', gzipLevel: 6, mtime: 1 },
      { compression: 'zstd', gzipLevel: 6, zstdLevel: 9, mtime: 1 },
      { compression: 'none', gzipLevel: 6, mtime: 1 },
    ];
    const wheel = { piece: 'file', content: 'x', size: 1, path: 'a', mode: 0o444 } as const;
    for (const key of [
      (f: LayerFormat) => storePathPartKey(info, f),
      (f: LayerFormat) => composedLayerKey(['k'], f),
      (f: LayerFormat) => wheelLayerKey(wheel, f),
      (f: LayerFormat) => storePathSliceLayerKey(info, { from: 0, to: 3 }, f),
    ]) {
      expect(new Set(formats.map(key)).size).toBe(formats.length);
    }
    // zstd's default level is its level 3: the same key either way.
    expect(storePathPartKey(info, { compression: 'zstd', gzipLevel: 6, mtime: 1 })).toBe(storePathPartKey(info, { compression: 'zstd', gzipLevel: 6, zstdLevel: 3, mtime: 1 }));
  });
});
