import { describe, expect, it } from 'vitest';
import { mergeCacheIndex, parseCacheIndex, serializeCacheIndex, type CacheIndex, type CacheIndexEntry } from '../../src/registry/cache-index.js';
import { isElfFactsList } from '../../src/pipeline/wheels.js';
import { settleAfter } from '../../src/pipeline/registry-cache.js';

const hex = (c: string) => c.repeat(64);
const entry = (c: string, pushed = '2026-12-01', extra: Partial<CacheIndexEntry> = {}): CacheIndexEntry => ({
  digest: `sha256:${hex(c)}`,
  diffId: `sha256:${hex('e')}`,
  size: 10,
  uncompressedSize: 20,
  mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
  pushed,
  ...extra,
});
const parse = (doc: unknown) => parseCacheIndex(Buffer.from(typeof doc === 'string' ? doc : JSON.stringify(doc)), isElfFactsList);
const facts = { objects: [{ wheel: '', entry: 'a.so', imagePath: '/x/a.so', facts: { elfClass: 64, endian: 'little', type: 3, machine: 62, interpreter: null, dynamic: true, soname: 'a.so', needed: ['libc.so.6'], rpath: null, runpath: ['$ORIGIN'] } }], problems: [] };

describe('the registry cache index', () => {
  it('reads back what it writes, keys sorted, the same bytes whatever the insertion order', () => {
    const a: CacheIndex = new Map([[hex('b'), entry('1')], [hex('a'), entry('2', '2026-12-02', { facts })]]);
    const b: CacheIndex = new Map([...a].reverse());
    const bytes = serializeCacheIndex(a);
    expect(bytes.equals(serializeCacheIndex(b))).toBe(true);
    expect(Object.keys(JSON.parse(bytes.toString()).entries)).toEqual([hex('a'), hex('b')]);
    const read = parse(bytes.toString());
    expect('index' in read && [...read.index.entries()].sort()).toEqual([...a.entries()].sort());
  });

  it.each([
    ['not JSON', '{"schemaVersion": 1, "entries": {', /not JSON/],
    ['truncated', serializeCacheIndex(new Map([[hex('a'), entry('1')]])).subarray(0, 50).toString(), /not JSON/],
    ['another schema', { schemaVersion: 2, entries: {} }, /schemaVersion 1/],
    ['no entries', { schemaVersion: 1, entries: [] }, /no entries/],
    ['a key of the wrong length', { schemaVersion: 1, entries: { [hex('a').slice(1)]: entry('1') } }, /not 64 hex digits/],
    ['a key that is not hex', { schemaVersion: 1, entries: { [hex('g')]: entry('1') } }, /not 64 hex digits/],
    ['a digest that is not sha256', { schemaVersion: 1, entries: { [hex('a')]: { ...entry('1'), digest: 'sha512:00' } } }, /malformed/],
    ['a negative size', { schemaVersion: 1, entries: { [hex('a')]: { ...entry('1'), size: -1 } } }, /malformed/],
    ['a media type that is not a layer\'s', { schemaVersion: 1, entries: { [hex('a')]: { ...entry('1'), mediaType: 'text/html' } } }, /malformed/],
    ['facts of another shape', { schemaVersion: 1, entries: { [hex('a')]: { ...entry('1'), facts: { objects: [{ wheel: 1 }], problems: [] } } } }, /malformed/],
    ['a null entry', { schemaVersion: 1, entries: { [hex('a')]: null } }, /malformed/],
    ['an array', [1, 2], /schemaVersion 1/],
  ])('refuses %s, saying why in one line', (_, doc, why) => {
    const read = parse(doc);
    expect('problem' in read && read.problem).toMatch(why);
    expect('problem' in read && read.problem).not.toContain('\n');
  });

  it('merges: this build\'s entries over the others, the others kept, the most recent first within the limit', () => {
    const held: CacheIndex = new Map([[hex('a'), entry('1', '2026-11-01')], [hex('b'), entry('2', '2026-12-01')], [hex('c'), entry('3', '2026-10-01')]]);
    const ours: CacheIndex = new Map([[hex('a'), entry('9', '2026-12-06')], [hex('d'), entry('4', '2026-12-06')]]);
    const merged = mergeCacheIndex(held, ours);
    expect(merged.get(hex('a'))!.digest).toBe(`sha256:${hex('9')}`);
    expect([...merged.keys()].sort()).toEqual([hex('a'), hex('b'), hex('c'), hex('d')]);
    // Bounded: ours always, then b (newest of the others), not c.
    expect([...mergeCacheIndex(held, ours, 3).keys()].sort()).toEqual([hex('a'), hex('b'), hex('d')]);
    expect([...mergeCacheIndex(held, ours, 1).keys()].sort()).toEqual([hex('a'), hex('d')]);
  });
});

describe('writing the index beside other builds', () => {
  it('reads it back after twice its own read-to-write time, at least 0.2 s and at most 10 s', () => {
    expect([settleAfter(0), settleAfter(30), settleAfter(99.2)]).toEqual([200, 200, 200]);
    expect([settleAfter(150), settleAfter(1234.5)]).toEqual([300, 2469]);
    expect(settleAfter(60_000)).toBe(10_000);
  });
});
