import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { beforeAll, describe, expect, it } from 'vitest';
import { indexExport, spoolToFile } from '../../src/nix/export.js';
import { readNar } from '../../src/nix/nar.js';
import { isUserError } from '../../src/util/errors.js';
import { exportClosure, nixBuild } from '../helpers/nix.js';
import { mutate, within } from '../helpers/mutate.js';
import { useScratchDirs } from '../helpers/scratch.js';
import { tools } from '../helpers/tools.js';

/**
 * A fuzzer for the export reader, in the suite: a few hundred seeded mutants of a real Nix export (small
 * files, so most bytes are structure: lengths, tags, names, targets, trailers). Every mutant must give
 * either a valid index whose NARs read back, or one clear UserError line from the indexer, the NAR
 * reader and the spooler alike: no other exception, no hang, no crash. The spooler, which follows only
 * the framing, must take every mutant the indexer takes. Seeds are fixed: a failure names the seed.
 */

const MUTANTS = 400;
const scratch = useScratchDirs();

describe.runIf(tools('nix-build', 'nix-store'))('fuzzing the export reader', () => {
  let dir: string;
  let base: Buffer;

  beforeAll(() => {
    dir = scratch('nix2oci-fuzz-export-');
    const [app] = nixBuild(`
      let lib = mkDrv "fuzz-lib" ''
        mkdir -p $out/lib/sub $out/share
        printf 'abc' > $out/lib/a.txt
        : > $out/lib/empty
        printf '#!/bin/sh\\necho hi\\n' > $out/lib/run; chmod +x $out/lib/run
        ln -s a.txt $out/lib/link
        ln -s ../lib $out/share/lib
        printf 'x%.0s' $(seq 1 100) > $out/lib/sub/hundred
        printf 'y' > "$out/lib/sub/sp ace"
      '';
      in mkDrv "fuzz-app" ''mkdir -p $out/bin; ln -s \${lib}/lib/run $out/bin/app; echo \${lib} > $out/refs''`);
    const file = join(dir, 'base.closure');
    exportClosure([app!], file);
    base = readFileSync(file);
  }, 120_000);

  it('the unmutated export reads whole', async () => {
    const file = join(dir, 'pristine.closure');
    writeFileSync(file, base);
    const infos = await indexExport(file);
    expect(infos).toHaveLength(2);
    for (const info of infos) await readNar(info, { directory: () => {}, symlink: () => {}, regular: async (_n, c) => { for await (const _ of c); } });
  });

  it(`gives a valid index or one UserError line for each of ${MUTANTS} mutants, in bounded time`, async () => {
    const outcomes = { indexed: 0, refused: 0 };
    const started = Date.now();
    for (let seed = 1; seed <= MUTANTS; seed++) {
      const { bytes, what } = mutate(base, seed);
      const file = join(dir, `mutant-${seed}.closure`);
      writeFileSync(file, bytes);
      const label = `seed ${seed} (${what})`;

      const indexed = await within(10_000, () => indexExport(file).then((infos) => ({ infos }), (error: unknown) => ({ error })), label);
      if ('error' in indexed) {
        expectCleanError(indexed.error, label);
        outcomes.refused++;
      } else {
        // What was indexed is read back as a layer would read it: every NAR whole, or a clean error.
        for (const info of indexed.infos) {
          await within(10_000, () => readNar(info, { directory: () => {}, symlink: () => {}, regular: async (_n, c) => { for await (const _ of c); } }), label).catch(
            (error: unknown) => expectCleanError(error, label),
          );
        }
        outcomes.indexed++;
      }

      // The same bytes as a stream: the spooler refuses cleanly, and takes every export the indexer took.
      const spoolDir = scratch('nix2oci-fuzz-spool-');
      const spooled = await within(10_000, () => spoolToFile(Readable.from([bytes]), spoolDir, 'stdin', 64 << 20).then(() => null, (error: unknown) => error), label);
      if (spooled !== null) expectCleanError(spooled, label);
      if (!('error' in indexed)) expect(spooled, `${label}: the spooler refused an export the indexer took`).toBeNull();
    }
    // The mutants reach both outcomes, and the run stays short.
    expect(outcomes.refused).toBeGreaterThan(MUTANTS / 4);
    expect(outcomes.indexed).toBeGreaterThan(0);
    expect(Date.now() - started).toBeLessThan(90_000);
  }, 120_000);
});

function expectCleanError(error: unknown, label: string): void {
  expect(isUserError(error), `${label}: ${error instanceof Error ? `${error.name}: ${error.message}\n${error.stack}` : String(error)}`).toBe(true);
  const message = (error as Error).message;
  expect(message, label).not.toContain('\n');
  expect(message.length, label).toBeLessThan(2000);
}
