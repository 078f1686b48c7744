import { describe, it, expect, beforeAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

/**
 * Gzip layer digests must not depend on the Node release that built them. Node bundles Chromium's zlib
 * and has changed it between releases; this test runs the real layer writer (compiled from src/layers)
 * under every supported Node line, taken from the npm registry's node-<os>-<arch> packages, on the same
 * ~7 MB of mixed data at levels 1, 6 and 9, and requires identical blobs. The tar spans two parts, so
 * the blob is several gzip members, each deflated on its own in parallel: their bytes and order must not
 * depend on the Node release either.
 */

const repo = resolve(import.meta.dirname, '../..');
const cache = join(homedir(), '.cache', 'nix2oci-test');
/** The oldest release `engines` allows, and the newest of each later line. */
const versions = ['20.19.0', '22', '24', '26'];

/** `node` of the given version from the npm registry, cached. */
function nodeBinary(version: string): string {
  const dir = join(cache, `node-${process.platform}-${process.arch}-${version}`);
  const binary = join(dir, 'package', 'bin', 'node');
  if (existsSync(binary)) return binary;
  mkdirSync(cache, { recursive: true });
  const work = mkdtempSync(join(cache, '.fetch-'));
  try {
    execFileSync('npm', ['pack', '--silent', `node-${process.platform}-${process.arch}@${version}`, '--pack-destination', work], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const tarball = readdirSync(work).find((f) => f.endsWith('.tgz'))!;
    mkdirSync(join(work, 'out'));
    execFileSync('tar', ['-xzf', join(work, tarball), '-C', join(work, 'out'), 'package/bin/node']);
    renameSync(join(work, 'out'), dir); // whole or not at all
    return binary;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** The script each Node runs: the compiled writeLayer on fixed inputs, printing the blobs' digests. */
const script = `
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeLayerFile } from './layer/writer.js';
import { FRAME_SIZE } from './layer/format.js';

function* inputs() {
  let x = 2463534242;
  const next = () => { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; return x >>> 0; };
  // Text much like a store path's: repeated paths and words (long matches).
  const lines = [];
  for (let i = 0; i < 20000; i++) lines.push('/nix/store/' + next().toString(36) + '-python3.11-pkg-' + (i % 97) + '/lib/module_' + (i % 13) + '.py\\n');
  yield ['text', Buffer.from(lines.join(''))];
  // Random bytes (stored blocks), zeros (runs), and small-alphabet bytes (short matches, literals).
  const random = Buffer.alloc(512 << 10); for (let i = 0; i < random.length; i += 4) random.writeUInt32LE(next(), i);
  yield ['random', random];
  yield ['zeros', Buffer.alloc(256 << 10)];
  const small = Buffer.alloc(512 << 10); for (let i = 0; i < small.length; i++) small[i] = 97 + (next() % 5);
  yield ['small-alphabet', small];
  // Past a part boundary (FRAME_SIZE is 4 MiB): several members, compressed concurrently.
  const words = [];
  for (let i = 0; i < 900000; i++) words.push((next() % 4 === 0 ? next().toString(36) : 'lib' + (next() % 50)) + (i % 16 ? ' ' : '\\n'));
  yield ['multi-part', Buffer.from(words.join(''))];
}

const source = async (sink) => {
  await sink.add({ type: 'directory', name: 'data', mode: 0o555 });
  for (const [name, bytes] of inputs()) await sink.add({ type: 'file', name: 'data/' + name, mode: 0o444, size: bytes.length, body: bytes });
};

const result = { node: process.version, zlib: process.versions.zlib, layers: {} };
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
    // Compile the writer and what it imports, alone, into a scratch dir every Node version can load.
    compiled = mkdtempSync(join(tmpdir(), 'nix2oci-gz-build-'));
    execFileSync(
      process.execPath,
      [
        join(repo, 'node_modules/typescript/bin/tsc'),
        '--outDir', compiled, '--rootDir', join(repo, 'src'),
        '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022',
        '--strict', '--skipLibCheck', '--types', 'node', '--typeRoots', join(repo, 'node_modules/@types'),
        join(repo, 'src/layer/writer.ts'),
      ],
      { stdio: 'inherit' },
    );
    writeFileSync(join(compiled, 'package.json'), '{"type":"module"}');
    writeFileSync(join(compiled, 'run.mjs'), script);
  });

  it('gives byte-identical blobs under Node 20, 22, 24 and 26 at levels 1, 6 and 9', () => {
    const binaries = [process.execPath, ...versions.map(nodeBinary)];
    const results = binaries.map(
      (node) =>
        JSON.parse(execFileSync(node, [join(compiled, 'run.mjs')], { encoding: 'utf8' })) as {
          node: string;
          zlib: string;
          layers: Record<string, { digest: string; size: number; diffId: string; parts: number }>;
        },
    );
    console.log(results.map((r) => `${r.node} zlib ${r.zlib}: level 6 ${r.layers['6']!.digest}`).join('\n'));
    expect(new Set(results.map((r) => r.node.split('.')[0])).size).toBe(4); // v20, v22, v24, v26 all ran
    const first = results[0]!.layers;
    expect(new Set(Object.values(first).map((l) => l.diffId)).size).toBe(1); // one tar, three compressions
    expect(new Set(Object.values(first).map((l) => l.digest)).size).toBe(3);
    expect(first['6']!.parts).toBeGreaterThanOrEqual(2); // several gzip members
    for (const r of results) expect({ node: r.node, layers: r.layers }).toEqual({ node: r.node, layers: first });
  });
});
