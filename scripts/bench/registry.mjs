// A local docker-registry for the benches: a free port, its storage in a temp directory, plain HTTP.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Starts docker-registry; resolves once it answers. `stored()` is the bytes of blobs it holds. */
export async function startBenchRegistry() {
  const dir = mkdtempSync(join(tmpdir(), 'nix2oci-bench-registry-'));
  const port = await new Promise((resolvePort) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port: free } = server.address();
      server.close(() => resolvePort(free));
    });
  });
  const config = join(dir, 'config.yml');
  writeFileSync(
    config,
    [
      'version: 0.1',
      'log: { level: error, accesslog: { disabled: true } }',
      `storage: { filesystem: { rootdirectory: ${join(dir, 'data')} } }`,
      `http: { addr: "127.0.0.1:${port}", secret: bench }`,
      '',
    ].join('\n'),
  );
  const child = spawn('docker-registry', ['serve', config], { stdio: 'ignore' });
  let missing = false;
  child.on('error', () => (missing = true));
  const registry = {
    host: `127.0.0.1:${port}`,
    dir,
    stored: () => treeSize(join(dir, 'data', 'docker', 'registry', 'v2', 'blobs')),
    stop: async () => {
      if (child.exitCode === null && !missing) {
        child.kill('SIGTERM');
        await new Promise((r) => child.once('exit', r));
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  for (let i = 0; i < 100; i++) {
    if (missing) throw new Error('docker-registry is not installed (scripts/install-system-deps.sh), or pass HOST:PORT');
    const up = await fetch(`http://${registry.host}/v2/`).then(
      () => true,
      () => false,
    );
    if (up) return registry;
    await new Promise((r) => setTimeout(r, 100));
  }
  await registry.stop();
  throw new Error(`docker-registry did not start on ${registry.host}`);
}

function treeSize(path) {
  if (!existsSync(path)) return 0;
  const info = statSync(path);
  if (!info.isDirectory()) return info.size;
  return readdirSync(path).reduce((sum, name) => sum + treeSize(join(path, name)), 0);
}
