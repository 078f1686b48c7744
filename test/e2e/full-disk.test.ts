import { spawnSync } from 'node:child_process';
import { chownSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, REPO, runCli } from '../helpers/cli.js';
import { useScratchDirs } from '../helpers/scratch.js';
import { mountTmpfs, tmpfsAvailable, type Tmpfs } from '../helpers/tmpfs.js';
import { tools } from '../helpers/tools.js';

/**
 * The unlucky operator: a full disk, a read-only file system, a TMPDIR that does not exist, a directory
 * one may not write. On real (tiny) tmpfs mounts, every case ends in one line naming the path and what
 * is wrong, exit status 1, and leaves nothing behind: never an internal error or half an output.
 */

const scratch = useScratchDirs();
const DEMO = ['--closure', join(REPO, 'layers/demo/demo.closure'), '--recipe', join(REPO, 'layers/demo/image.json')];
const FORMATS = ['oci-archive', 'docker-archive', 'oci-layout'] as const;

describe.runIf(tmpfsAvailable())('full disks, read-only and missing directories', () => {
  /** Smaller than the demo image (about 1 MB), so every output fills it. */
  let disk: Tmpfs;

  beforeAll(() => {
    disk = mountTmpfs('512k');
  });
  afterAll(() => disk?.unmount());

  const build = (args: string[], env: NodeJS.ProcessEnv = {}) => runCli(['build-image', '-q', ...DEMO, ...args], { env });
  const expectOneLine = (result: { code: number | null; stderr: string }, pattern: RegExp) => {
    expect(result.code, result.stderr).toBe(1);
    expect(result.stderr.split('\n').filter(Boolean), result.stderr).toHaveLength(1);
    expect(result.stderr).toMatch(pattern);
    expect(result.stderr).not.toMatch(/internal error/);
  };

  it.each(FORMATS)('an output (%s) that fills the disk: ENOSPC, naming it, and no temporary left', (format) => {
    disk.clear();
    const out = join(disk.dir, 'image');
    expectOneLine(build(['--no-cache', '--format', format, '--output', out]), new RegExp(`^nix2oci: cannot write ${out}: no space left on the device \\(ENOSPC\\)\\n$`));
    expect(readdirSync(disk.dir)).toEqual([]);
  });

  it('a TMPDIR that fills up: the work directory is named, and removed', () => {
    disk.clear();
    // Layers written into an archive file go straight into it; streamed to standard output, they
    // wait in the work directory first.
    expectOneLine(build(['--no-cache', '--compression', 'none', '--output', '-'], { TMPDIR: disk.dir }), new RegExp(`^nix2oci: cannot .*${disk.dir}.*: no space left on the device \\(ENOSPC\\)`));
    expect(readdirSync(disk.dir)).toEqual([]);
  });

  it('an archive written straight from the export needs no room in TMPDIR for its layers', () => {
    disk.clear();
    const out = join(scratch('nix2oci-full-out-'), 'image.tar');
    const result = build(['--no-cache', '--compression', 'none', '--output', out], { TMPDIR: disk.dir });
    expect(result.code, result.stderr).toBe(0);
    expect(readdirSync(disk.dir)).toEqual([]);
  });

  it('an export on stdin larger than TMPDIR can take: refused at its limit, not at ENOSPC', () => {
    disk.clear();
    const out = join(scratch('nix2oci-full-out-'), 'image.tar');
    const result = spawnSync('sh', ['-c', `cat "${join(REPO, 'layers/demo/demo.closure')}" | "${process.execPath}" "${CLI}" build-image -q --closure - --no-cache --output "${out}"`], {
      encoding: 'utf8',
      env: { ...process.env, TMPDIR: disk.dir, NIX2OCI_DEBUG: '' },
    });
    expectOneLine(
      { code: result.status, stderr: result.stderr },
      new RegExp(`^nix2oci: stdin: byte \\d+: a file of \\d+ bytes declared there is larger than the .* the export may take in ${disk.dir}/nix2oci-build-\\w+ \\(the free space there, less a reserve\\)`),
    );
    expect(readdirSync(disk.dir)).toEqual([]);
  });

  it('a read-only file system, for the output and for TMPDIR: EROFS', () => {
    disk.clear();
    disk.readOnly(true);
    try {
      for (const format of FORMATS) {
        const out = join(disk.dir, `image-${format}`);
        expectOneLine(build(['--no-cache', '--format', format, '--output', out]), new RegExp(`^nix2oci: cannot write ${out}: the file system is read-only \\(EROFS\\)\\n$`));
      }
      const out = join(scratch('nix2oci-ro-out-'), 'image.tar');
      expectOneLine(build(['--no-cache', '--output', out], { TMPDIR: disk.dir }), new RegExp(`^nix2oci: cannot create a temporary directory in ${disk.dir}: the file system is read-only \\(EROFS\\)\\n$`));
    } finally {
      disk.readOnly(false);
    }
  });

  it('a TMPDIR that does not exist, and an output directory that does not', () => {
    const out = join(scratch('nix2oci-missing-out-'), 'image.tar');
    const missing = join(disk.dir, 'no-such-dir');
    expectOneLine(
      build(['--no-cache', '--output', out], { TMPDIR: missing }),
      new RegExp(`^nix2oci: cannot create a temporary directory in ${missing}: no such file or directory \\(ENOENT\\) \\(is TMPDIR set to a directory that exists\\?\\)\\n$`),
    );
    expectOneLine(build(['--no-cache', '--output', join(missing, 'x.tar')]), new RegExp(`^nix2oci: cannot write ${missing}/x\\.tar: directory ${missing} does not exist\\n$`));
  });

  it.runIf(tools('setpriv'))('directories one may not write (root without its override of permissions): EACCES', () => {
    const locked = scratch('nix2oci-locked-');
    const out = join(locked, 'out');
    mkdirSync(out, { mode: 0o755 });
    // Owned by someone else and not writable by others: only the capability root is about to drop could write it.
    chownSync(out, 65534, 65534);
    const unprivileged = (args: string[], env: NodeJS.ProcessEnv = {}) => {
      const caps = ['--inh-caps=-dac_override,-dac_read_search', '--bounding-set=-dac_override,-dac_read_search'];
      const result = spawnSync('setpriv', [...caps, '--', process.execPath, CLI, 'build-image', '-q', ...DEMO, '--no-cache', ...args], {
        cwd: REPO,
        encoding: 'utf8',
        env: { ...process.env, NIX2OCI_DEBUG: '', ...env },
      });
      return { code: result.status, stderr: result.stderr };
    };
    for (const format of FORMATS) {
      const image = join(out, `image-${format}`);
      expectOneLine(unprivileged(['--format', format, '--output', image]), new RegExp(`^nix2oci: cannot write ${image}: permission denied \\(EACCES\\)\\n$`));
    }
    expectOneLine(
      unprivileged(['--output', join(disk.dir, 'x.tar')], { TMPDIR: out }),
      new RegExp(`^nix2oci: cannot create a temporary directory in ${out}: permission denied \\(EACCES\\)\\n$`),
    );
  });
});
