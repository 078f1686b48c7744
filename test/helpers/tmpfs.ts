import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Tiny tmpfs mounts for full-disk and read-only cases: a real file system that really fills up (ENOSPC)
 * and really refuses writes (EROFS), not a mock. Mounting needs root (CI runs as root). Where a mount
 * is refused, the tests skip with a message, except under CI, where that is a failure.
 */
export interface Tmpfs {
  dir: string;
  /** Remounts it read-only or read-write. */
  readOnly(on: boolean): void;
  /** Empties it (outputs of a previous case). */
  clear(): void;
  unmount(): void;
}

export function mountTmpfs(size: string, prefix = 'nix2oci-tmpfs-'): Tmpfs {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=1777`, 'tmpfs', dir], { stdio: 'pipe' });
  return {
    dir,
    readOnly: (on) => execFileSync('mount', ['-o', `remount,${on ? 'ro' : 'rw'}`, dir], { stdio: 'pipe' }),
    clear: () => execFileSync('sh', ['-c', `rm -rf "${dir}"/* "${dir}"/.[!.]* 2>/dev/null || true`]),
    unmount: () => {
      execFileSync('umount', [dir], { stdio: 'pipe' });
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** For `describe.runIf(tmpfsAvailable())`: whether a tmpfs can be mounted here (tried once). */
let available: boolean | undefined;
export function tmpfsAvailable(): boolean {
  if (available !== undefined) return available;
  let why = '';
  if (process.getuid?.() !== 0) {
    why = 'mounting a tmpfs needs root';
  } else {
    try {
      mountTmpfs('64k', 'nix2oci-tmpfs-probe-').unmount();
    } catch (err) {
      why = `mount -t tmpfs was refused: ${String((err as { stderr?: Buffer }).stderr ?? err).trim()}`;
    }
  }
  available = why === '';
  if (!available) {
    if (process.env.CI) throw new Error(`full-disk tests need a tmpfs: ${why} (run the tests as root, with mount allowed)`);
    console.warn(`skipping full-disk tests: ${why}`);
  }
  return available;
}
