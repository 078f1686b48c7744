import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

export const REPO = resolve(import.meta.dirname, '../..');
export const CLI = resolve(REPO, 'dist/cli/main.js');

/**
 * Builds run by tests never touch the user's layer cache: unless a test passes --cache-dir (or its own
 * XDG_CACHE_HOME), they share this per-process one, removed when the test process exits.
 */
let testCacheHome: string | undefined;
function cacheHome(): string {
  if (!testCacheHome) {
    const dir = mkdtempSync(join(tmpdir(), 'nix2oci-test-cache-'));
    testCacheHome = dir;
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  }
  return testCacheHome;
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the built CLI (`npm test` builds dist/ first) as a user would, in a child process. */
export function runCli(args: string[], options: SpawnSyncOptions = {}): CliResult {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first`);
  const result = spawnSync(process.execPath, [CLI, ...args], {
    cwd: REPO,
    encoding: 'utf8',
    maxBuffer: 256 << 20,
    ...options,
    env: { ...process.env, NIX2OCI_DEBUG: '', XDG_CACHE_HOME: cacheHome(), ...options.env },
  });
  if (result.error) throw result.error;
  return { code: result.status, stdout: String(result.stdout), stderr: String(result.stderr) };
}

/** Like runCli, but fails with the CLI's stderr unless it exits 0. */
export function cliOk(args: string[], options: SpawnSyncOptions = {}): CliResult {
  const result = runCli(args, options);
  if (result.code !== 0) throw new Error(`nix2oci ${args.join(' ')} exited ${result.code}:\n${result.stderr}`);
  return result;
}
