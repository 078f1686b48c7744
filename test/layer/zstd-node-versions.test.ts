import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { rmSync } from 'node:fs';
import { compileWriter, runUnderEveryNode, WRITER_INPUTS } from '../helpers/node-versions.js';

/**
 * zstd layer digests must not depend on the Node release, nor on how many frames compress at once. The
 * frames come from one pinned zstd WebAssembly build on worker threads; this test runs the real layer
 * writer (compiled from src/layer) under every supported Node line on the same ~7 MB of mixed data
 * at levels 1, 3 and 9 (level 3 with 1 and 4 turns), and requires identical blobs. It also checks each blob with
 * the system's `zstd -t` and that `zstd -d` gives back the tar the diffID names.
 */

const script = `
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { writeLayerFile } from './layer/writer.js';
import { Turns } from './layer/codec.js';
import { FRAME_SIZE } from './layer/format.js';

${WRITER_INPUTS}
const result = { node: process.version, layers: {} };
for (const zstdLevel of [1, 3, 9]) {
  for (const turns of zstdLevel === 3 ? [1, 4] : [4]) {
    const dir = mkdtempSync(join(tmpdir(), 'nix2oci-zstd-'));
    const blob = await writeLayerFile(source, { compression: 'zstd', zstdLevel, gzipLevel: 6, mtime: 1 }, dir, { turns: new Turns(turns) });
    const path = join(dir, blob.digest.slice(7));
    execFileSync('zstd', ['-q', '-t', path]);
    const tar = execFileSync('zstd', ['-q', '-d', '-c', path], { maxBuffer: 1 << 26 });
    const untarred = 'sha256:' + createHash('sha256').update(tar).digest('hex');
    result.layers[zstdLevel + '/' + turns] = { digest: blob.digest, size: blob.size, diffId: blob.diffId, untarred, frames: Math.ceil(blob.tarSize / FRAME_SIZE) };
    rmSync(dir, { recursive: true });
  }
}
console.log(JSON.stringify(result));
`;

describe('zstd layers across Node releases', () => {
  let compiled: string;

  beforeAll(() => {
    compiled = compileWriter(script);
  });

  afterAll(() => rmSync(compiled, { recursive: true, force: true }));

  it('gives byte-identical, valid blobs under Node 20, 22, 24 and 26 at levels 1, 3 and 9, whatever the turns', () => {
    const results = runUnderEveryNode<{
      node: string;
      layers: Record<string, { digest: string; size: number; diffId: string; untarred: string; frames: number }>;
    }>(compiled);
    console.log(results.map((r) => `${r.node}: level 3 ${r.layers['3/4']!.digest}`).join('\n'));
    expect(new Set(results.map((r) => r.node.split('.')[0])).size).toBe(4); // v20, v22, v24, v26 all ran
    const first = results[0]!.layers;
    const layers = Object.values(first);
    expect(new Set(layers.map((l) => l.diffId)).size).toBe(1); // one tar
    for (const l of layers) expect(l.untarred).toBe(l.diffId); // zstd -d gives back that tar
    expect(first['3/1']).toEqual(first['3/4']); // the number of turns changes nothing
    expect(new Set(layers.map((l) => l.digest)).size).toBe(3); // three levels, three blobs
    expect(first['3/4']!.frames).toBeGreaterThanOrEqual(2); // several frames
    for (const r of results) expect({ node: r.node, layers: r.layers }).toEqual({ node: r.node, layers: first });
  }, 300_000);
});
