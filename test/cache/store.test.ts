import { mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { CacheStore, entryValue } from '../../src/cache/store.js';

/** An entry file as every version of the cache has written it: JSON.stringify({ sum, value }) and a newline. */
function classic(value: unknown): string {
  return `${JSON.stringify({ sum: createHash('sha256').update(JSON.stringify(value)).digest('hex'), value })}\n`;
}

describe('cache entry files', () => {
  const value = { digest: `sha256:${'a'.repeat(64)}`, names: ['é', 'a"b', 'c\\d'], nested: { n: 1, list: [1, 2, 3] } };

  it('are written byte for byte as before (one serialization, the same file)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'nix2oci-store-'));
    const store = await CacheStore.open(dir);
    await store.writeEntry('inputs', 'k', value);
    expect(readFileSync(store.entryPath('inputs', 'k'), 'utf8')).toBe(classic(value));
    expect(await store.readEntry('inputs', 'k', (v): v is typeof value => true)).toEqual(value);
  });

  it('read back checked: a changed byte in the value or the sum is a miss, other JSON is checked the slow way', () => {
    const text = classic(value);
    expect(entryValue(text)).toEqual(value);
    expect(entryValue(text.replace('"n":1', '"n":2'))).toBeNull();
    expect(entryValue(text.replace(/"sum":"./, '"sum":"0'))).toBeNull();
    // Pretty-printed (or otherwise reshaped) JSON still reads, its checksum checked on the value.
    const pretty = JSON.stringify(JSON.parse(text), null, 2);
    expect(entryValue(pretty)).toEqual(value);
    expect(entryValue(pretty.replace('"n": 1', '"n": 2'))).toBeNull();
  });

  it('writes what writeLater put off only at flush', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'nix2oci-store-'));
    const store = await CacheStore.open(dir);
    store.writeLater('inputs', 'later', value);
    expect(readdirSync(join(store.root, 'inputs'))).toEqual([]);
    await store.flush();
    expect(readdirSync(join(store.root, 'inputs'))).toEqual(['later.json']);
  });
});
