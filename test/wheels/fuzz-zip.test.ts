import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { readWheelInfo } from '../../src/wheels/wheel-info.js';
import { verifyWheel } from '../../src/wheels/verify.js';
import { wheelLayerSource } from '../../src/wheels/install.js';
import { ZipReader } from '../../src/wheels/zip.js';
import { isUserError } from '../../src/util/errors.js';
import { mutate, within } from '../helpers/mutate.js';
import { useScratchDirs } from '../helpers/scratch.js';
import { tools } from '../helpers/tools.js';
import { makeWheel } from '../helpers/wheels.js';

/**
 * A fuzzer for the zip reader, in the suite: a few hundred seeded mutants of a wheel made by Python's
 * zipfile (deflated and stored entries, directory entries, a script, an entry point), aimed at its
 * record headers as well as anywhere. Each must be read, verified and installed into a layer, or be
 * refused with one UserError line: no other exception, no hang, no runaway memory. Seeds are fixed.
 */

const MUTANTS = 300;
const scratch = useScratchDirs();

describe.runIf(tools('python3'))('fuzzing the zip reader', () => {
  let dir: string;
  let base: Buffer;
  /** Offsets of the zip's record signatures (local headers, central directory, end records). */
  let hotspots: number[];

  beforeAll(() => {
    dir = scratch('nix2oci-fuzz-zip-');
    const wheel = makeWheel({
      dir,
      name: 'fuzz',
      version: '1.0',
      dirEntries: true,
      files: {
        'fuzz/__init__.py': 'def main():\n    print("fuzz")\n',
        'fuzz/data.txt': 'data '.repeat(200),
        'fuzz/stored.bin': { content: { random: 3000, seed: 5 }, stored: true },
        'fuzz/sub/empty.py': '',
      },
      dataScripts: { 'fuzz-tool': { content: '#!python\nprint(1)\n', mode: 0o755 } },
      entryPoints: { console_scripts: { fuzz: 'fuzz:main' } },
    });
    base = readFileSync(wheel);
    hotspots = [];
    for (let at = base.indexOf('PK'); at >= 0; at = base.indexOf('PK', at + 2)) {
      const kind = base.readUInt16LE(at + 2);
      if (kind === 0x0403 || kind === 0x0201 || kind === 0x0605 || kind === 0x0606 || kind === 0x0706) hotspots.push(at);
    }
  }, 60_000);

  /** Reads, verifies and installs the wheel into a layer whose bytes are thrown away. */
  async function install(file: string): Promise<void> {
    const info = { ...(await readWheelInfo(file)), file };
    await verifyWheel(info);
    const layer = wheelLayerSource(info, { prefix: '/opt/python', pythonVersion: '3.11', interpreter: '/nix/store/00000000000000000000000000000000-python3/bin/python3' });
    for (const piece of layer.pieces) {
      await piece.source({
        add: async (entry) => {
          if (entry.type === 'file' && 'body' in entry && entry.body && !Buffer.isBuffer(entry.body)) {
            for await (const _ of entry.body as AsyncIterable<Buffer>);
          }
        },
      });
    }
  }

  it('the unmutated wheel installs', async () => {
    expect(hotspots.length).toBeGreaterThan(10);
    await install(join(dir, 'fuzz-1.0-py3-none-any.whl'));
  });

  it(`installs or refuses in one UserError line each of ${MUTANTS} mutants, in bounded time`, async () => {
    const outcomes = { installed: 0, refused: 0 };
    const started = Date.now();
    const heap = process.memoryUsage().heapUsed;
    for (let seed = 1; seed <= MUTANTS; seed++) {
      const { bytes, what } = mutate(base, seed, hotspots);
      const mutantDir = join(dir, `m${seed}`);
      const file = join(mutantDir, 'fuzz-1.0-py3-none-any.whl');
      await import('node:fs/promises').then((fs) => fs.mkdir(mutantDir));
      writeFileSync(file, bytes);
      const label = `seed ${seed} (${what})`;
      const result = await within(10_000, () => install(file).then(() => null, (error: unknown) => error), label);
      if (result === null) {
        outcomes.installed++;
      } else {
        expect(isUserError(result), `${label}: ${result instanceof Error ? `${result.name}: ${result.message}\n${result.stack}` : String(result)}`).toBe(true);
        expect((result as Error).message, label).not.toContain('\n');
        outcomes.refused++;
      }
      // Opening alone (the central directory) also ends cleanly, and closes what it opened.
      const opened = await within(10_000, () => ZipReader.open(file).then((zip) => zip.close().then(() => null), (error: unknown) => error), label);
      if (opened !== null) expect(isUserError(opened), `${label}: ${String(opened)}`).toBe(true);
    }
    expect(outcomes.refused).toBeGreaterThan(MUTANTS / 2);
    expect(outcomes.installed).toBeGreaterThan(0);
    expect(Date.now() - started).toBeLessThan(90_000);
    // No mutant made the reader hold on to large buffers.
    expect(process.memoryUsage().heapUsed - heap).toBeLessThan(256 << 20);
  }, 120_000);
});
