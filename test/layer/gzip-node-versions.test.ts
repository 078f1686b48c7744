import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { rmSync } from 'node:fs';
import { compileWriter, runUnderEveryNode, WRITER_INPUTS } from '../helpers/node-versions.js';

/**
 * Gzip layer digests must not depend on the Node release that built them. Node bundles Chromium's zlib
 * and has changed it between releases; this test runs the real layer writer (compiled from src/layers)
 * under every supported Node line, taken from the npm registry's node-<os>-<arch> packages, on the same
 * ~7 MB of mixed data at levels 1, 6 and 9, and requires identical blobs. The tar spans two parts, so
 * the blob is several gzip members, each deflated on its own in parallel: their bytes and order must not
 * depend on the Node release either.
 */

/** The script each Node runs: the compiled writeLayer on fixed inputs, printing the blobs' digests. */
const script = `
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeLayerFile } from './layer/writer.js';
import { FRAME_SIZE } from './layer/format.js';
import { rawZlib } from './util/raw-zlib.js';
import * as zlib from 'node:zlib';

${WRITER_INPUTS}
// The threads deflate through zlib's handle where Node has it (the same bytes either way): it must be there.
const result = { node: process.version, zlib: process.versions.zlib, handle: rawZlib(zlib, 'deflateRaw') !== null, layers: {} };
for (const gzipLevel of [1, 6, 9]) {
  const dir = mkdtempSync(join(tmpdir(), 'nix2oci-gz-'));
  const blob = await writeLayerFile(source, { compression: 'gzip', gzipLevel, mtime: 1 }, dir);
  result.layers[gzipLevel] = { digest: blob.digest, size: blob.size, diffId: blob.diffId, parts: Math.ceil(blob.tarSize / FRAME_SIZE) };
  rmSync(dir, { recursive: true });
}
console.log(JSON.stringify(result));
`;

describe('gzip layers across Node releases', () => {
  let compiled: string;

  beforeAll(() => {
    compiled = compileWriter(script);
  });

  afterAll(() => rmSync(compiled, { recursive: true, force: true }));

  it('gives byte-identical blobs under Node 20, 22, 24 and 26 at levels 1, 6 and 9', () => {
    const results = runUnderEveryNode<{
      node: string;
      zlib: string;
      handle: boolean;
      layers: Record<string, { digest: string; size: number; diffId: string; parts: number }>;
    }>(compiled);
    console.log(results.map((r) => `${r.node} zlib ${r.zlib}: level 6 ${r.layers['6']!.digest}`).join('\n'));
    expect(new Set(results.map((r) => r.node.split('.')[0])).size).toBe(4); // v20, v22, v24, v26 all ran
    const first = results[0]!.layers;
    expect(new Set(Object.values(first).map((l) => l.diffId)).size).toBe(1); // one tar, three compressions
    expect(new Set(Object.values(first).map((l) => l.digest)).size).toBe(3);
    expect(first['6']!.parts).toBeGreaterThanOrEqual(2); // several gzip members
    for (const r of results) expect({ node: r.node, handle: r.handle, layers: r.layers }).toEqual({ node: r.node, handle: true, layers: first });
  });
});
