import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

/**
 * Running the layer writer under every supported Node line, for the tests that require identical blobs
 * whatever the Node release: each Node comes from the npm registry's node-<os>-<arch> packages (cached).
 */

const repo = resolve(import.meta.dirname, '../..');
const cache = join(homedir(), '.cache', 'nix2oci-test');
/** The oldest release `engines` allows, and the newest of each later line. */
export const NODE_VERSIONS = ['20.19.0', '22', '24', '26'];

/** `node` of the given version from the npm registry, cached. */
export function nodeBinary(version: string): string {
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

/**
 * The layer writer (or another module of src/) and what it imports, compiled alone into a scratch
 * directory every Node version can load, with `script` as its run.mjs. The directory is inside the
 * repository's node_modules, so the compiled code finds the same dependencies (the zstd WebAssembly) as
 * the tool. Returns the directory.
 */
export function compileWriter(script: string, module = 'src/layer/writer.ts'): string {
  const compiled = mkdtempSync(join(repo, 'node_modules', '.nix2oci-node-versions-'));
  execFileSync(
    process.execPath,
    [
      join(repo, 'node_modules/typescript/bin/tsc'),
      '--outDir', compiled, '--rootDir', join(repo, 'src'),
      '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022',
      '--strict', '--skipLibCheck', '--types', 'node', '--typeRoots', join(repo, 'node_modules/@types'),
      join(repo, module),
    ],
    { stdio: 'inherit' },
  );
  writeFileSync(join(compiled, 'package.json'), '{"type":"module"}');
  writeFileSync(join(compiled, 'run.mjs'), script);
  return compiled;
}

/** What run.mjs of `compiled` prints (one JSON line), under this Node and every one of NODE_VERSIONS, in that order. */
export function runUnderEveryNode<T>(compiled: string): T[] {
  return [process.execPath, ...NODE_VERSIONS.map(nodeBinary)].map((node) => JSON.parse(execFileSync(node, [join(compiled, 'run.mjs')], { encoding: 'utf8' })) as T);
}

/** The inputs and source every Node writes: ~7 MB of mixed data, past a frame boundary. Script text. */
export const WRITER_INPUTS = `
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
  // Past a frame boundary (FRAME_SIZE is 4 MiB): several frames, compressed concurrently.
  const words = [];
  for (let i = 0; i < 900000; i++) words.push((next() % 4 === 0 ? next().toString(36) : 'lib' + (next() % 50)) + (i % 16 ? ' ' : '\\n'));
  yield ['multi-part', Buffer.from(words.join(''))];
}

const source = async (sink) => {
  await sink.add({ type: 'directory', name: 'data', mode: 0o555 });
  for (const [name, bytes] of inputs()) await sink.add({ type: 'file', name: 'data/' + name, mode: 0o444, size: bytes.length, body: bytes });
};
`;
