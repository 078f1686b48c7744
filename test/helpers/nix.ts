import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, openSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Builds a Nix expression with the real, offline Nix from apt and returns its output paths.
 * Derivations use `builder = "/bin/sh"` and absolute tool paths, so nothing is downloaded.
 * `mkDrv` in the expression's scope is a helper: mkDrv "name" ''shell script writing $out'' [ deps ].
 */
export function nixBuild(expr: string): string[] {
  const dir = mkdtempSync(join(tmpdir(), 'nix2oci-nix-'));
  const file = join(dir, 'default.nix');
  writeFileSync(
    file,
    `let mkDrv = name: script: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; PATH = "/usr/bin:/bin"; };\nin ${expr}\n`,
  );
  const out = execFileSync('nix-build', ['--no-out-link', '--quiet', file], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    maxBuffer: 64 << 20,
  });
  return out.split('\n').filter(Boolean);
}

/** All store paths in the closure of `paths` (nix-store -qR), sorted. */
export function closureOf(paths: string[]): string[] {
  const out = execFileSync('nix-store', ['-qR', ...paths], { encoding: 'utf8', maxBuffer: 64 << 20 });
  return out.split('\n').filter(Boolean).sort();
}

/** Writes `nix-store --export` of the closure of `paths` to `outFile` and returns the closure's paths. */
export function exportClosure(paths: string[], outFile: string): string[] {
  const all = closureOf(paths);
  const fd = openSync(outFile, 'w');
  try {
    execFileSync('nix-store', ['--export', ...all], { stdio: ['ignore', fd, 'pipe'], maxBuffer: 64 << 20 });
  } finally {
    closeSync(fd);
  }
  return all;
}

/** `nix path-info --json --recursive` of `paths`, as the text Nix printed. */
export function pathInfoJson(paths: string[]): string {
  return execFileSync('nix', ['path-info', '--json', '--recursive', ...paths], {
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  });
}
