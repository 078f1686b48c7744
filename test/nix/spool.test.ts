import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { spoolToFile } from '../../src/nix/export.js';
import { spoolLimit } from '../../src/nix/spool.js';
import { indexExport } from '../../src/nix/export.js';
import { UserError } from '../../src/util/errors.js';
import { spawnSync } from 'node:child_process';
import { CLI, REPO, runCli } from '../helpers/cli.js';
import { useScratchDirs } from '../helpers/scratch.js';

/**
 * A stream given as an export (stdin, a pipe, a device) is checked while it is spooled: what is not an
 * export fails within its first bytes, and nothing, endless or not, is spooled past its limit.
 */

const scratch = useScratchDirs();
const DEMO = join(REPO, 'layers/demo/demo.closure');

const u64 = (n: number | bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
};
const str = (s: string) => Buffer.concat([u64(Buffer.byteLength(s)), Buffer.from(s), Buffer.alloc((8 - (Buffer.byteLength(s) % 8)) % 8)]);
/** An export's first path up to (and including) the size of its only file. */
const fileHeader = (size: bigint) => Buffer.concat([u64(1), ...['nix-archive-1', '(', 'type', 'regular', 'contents'].map(str), u64(size)]);

async function spoolError(stream: Readable, limit = 64 << 20): Promise<{ err: Error; dir: string }> {
  const dir = scratch('nix2oci-spool-');
  const err = await spoolToFile(stream, dir, 'stdin', limit).then(
    () => new Error('spooled'),
    (e: unknown) => e as Error,
  );
  expect(err).toBeInstanceOf(UserError);
  expect(err.message).not.toContain('\n');
  // Nothing is left behind: no spooled file, no partial one.
  expect(readdirSync(dir)).toEqual([]);
  return { err, dir };
}

/** An endless stream of `chunk`, counting what was read from it. */
function endless(chunk: Buffer, head: Buffer = Buffer.alloc(0)): { stream: Readable; read: () => number } {
  let read = 0;
  const stream = new Readable({
    read() {
      const next = read === 0 && head.length > 0 ? head : chunk;
      read += next.length;
      this.push(next);
    },
  });
  return { stream, read: () => read };
}

describe('spooling a stream', () => {
  it('takes a whole export, and the indexer reads it like the file', async () => {
    const dir = scratch('nix2oci-spool-');
    const file = await spoolToFile(Readable.from([readFileSync(DEMO)]), dir, 'stdin', 16 << 20);
    expect(readFileSync(file).equals(readFileSync(DEMO))).toBe(true);
    expect((await indexExport(file)).length).toBe((await indexExport(DEMO)).length);
  });

  it('stops an endless stream of zeros at byte 8, having read little of it', async () => {
    const zeros = endless(Buffer.alloc(64 << 10));
    const { err } = await spoolError(zeros.stream);
    expect(err.message).toBe('stdin: byte 8: not a nix-store --export stream: it starts with its end (0) and data follows');
    expect(zeros.read()).toBeLessThan(1 << 20);
  });

  it('refuses random bytes and text at once', async () => {
    expect((await spoolError(endless(Buffer.from('y\n'.repeat(4096))).stream)).err.message).toBe(
      'stdin: byte 0: not a nix-store --export stream (it starts with 0xa790a790a790a79, not 1)',
    );
    expect((await spoolError(Readable.from([Buffer.concat([u64(1), str('not-a-nar')])]))).err.message).toBe(
      'stdin: byte 8: path #1: not a NAR (no nix-archive-1 header)',
    );
  });

  it('refuses a file declared bigger than the limit as soon as its size is read', async () => {
    const huge = endless(Buffer.alloc(64 << 10), fileHeader(2n ** 50n));
    const { err, dir } = await spoolError(huge.stream, 8 << 20);
    expect(err.message).toBe(
      `stdin: byte 96: a file of ${2 ** 50} bytes declared there is larger than the 8.0 MiB the export may take in ${dir} (the limit given); give the export as a file instead, or spool to a larger file system (TMPDIR, --cache-dir, $NIX2OCI_SPOOL_LIMIT)`,
    );
    expect(huge.read()).toBeLessThan(1 << 20);
  });

  it('stops an endless, well-formed stream (a directory that never ends) at the limit', async () => {
    // Entries of empty files, forever: each one is valid NAR framing.
    const entry = Buffer.concat([...['entry', '(', 'name', 'x', 'node', '(', 'type', 'regular', 'contents'].map(str), u64(0), str(')'), str(')')]);
    const head = Buffer.concat([u64(1), ...['nix-archive-1', '(', 'type', 'directory'].map(str)]);
    const forever = endless(Buffer.concat(Array.from({ length: 256 }, () => entry)), head);
    const { err } = await spoolError(forever.stream, 4 << 20);
    expect(err.message).toMatch(/^stdin: the export is larger than the 4\.0 MiB the export may take in /);
    expect(forever.read()).toBeLessThan(5 << 20);
  });

  it('reports an export cut short, and data after its end', async () => {
    const demo = readFileSync(DEMO);
    expect((await spoolError(Readable.from([demo.subarray(0, 5000)]))).err.message).toBe('stdin: unexpected end of the export at byte 5000');
    expect((await spoolError(Readable.from([demo, Buffer.from('trailing')]))).err.message).toBe(
      `stdin: byte ${demo.length}: data after the end of the export (its final 0 at byte ${demo.length - 8}); concatenated exports must be given as separate files`,
    );
  });

  it('defaults to the free space of the spool directory less a reserve, or $NIX2OCI_SPOOL_LIMIT', async () => {
    const dir = scratch('nix2oci-spool-');
    expect(await spoolLimit(dir, {})).toBeGreaterThan(0);
    expect(await spoolLimit(dir, { NIX2OCI_SPOOL_LIMIT: '3M' })).toBe(3 << 20);
    await expect(spoolLimit(dir, { NIX2OCI_SPOOL_LIMIT: 'lots' })).rejects.toThrow('NIX2OCI_SPOOL_LIMIT must be a size such as 20G, got "lots"');
  });
});

describe('build-image with a stream that is not an export', () => {
  it('fails in one line, at once, for --closure /dev/zero and for an endless pipe over the limit', () => {
    const out = join(scratch('nix2oci-spool-cli-'), 'x.tar');
    const zero = runCli(['build-image', '-q', '--closure', '/dev/zero', '--no-cache', '--output', out]);
    expect(zero.code).toBe(1);
    expect(zero.stderr).toBe('nix2oci: /dev/zero: byte 8: not a nix-store --export stream: it starts with its end (0) and data follows\n');
    // Through a pipe, as a user would: the CLI stops reading long before the writer is done.
    const limited = spawnSync('sh', ['-c', `cat "${DEMO}" | "${process.execPath}" "${CLI}" build-image -q --closure - --no-cache --output "${out}"`], {
      encoding: 'utf8',
      env: { ...process.env, NIX2OCI_SPOOL_LIMIT: '1M' },
    });
    expect(limited.status).toBe(1);
    expect(limited.stderr).toMatch(/^nix2oci: stdin: byte \d+: a file of \d+ bytes declared there is larger than the 1\.0 MiB the export may take in .* \(\$NIX2OCI_SPOOL_LIMIT\);/);
  });
});
