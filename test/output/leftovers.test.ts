import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeImage, type OutputFormat } from '../../src/output/write.js';
import { removeLeftovers } from '../../src/util/atomic.js';
import { writeFileAtomically } from '../../src/util/atomic.js';
import { compileForChild } from '../registry/support/compile.js';
import { randomLayer, writeOciLayout, writeTestImage, type TestImage } from '../registry/support/test-image.js';
import { useScratchDirs } from '../helpers/scratch.js';

/**
 * A run killed with SIGKILL cannot remove its temporary output (an image's worth of bytes, hidden as
 * `.<name>.….tmp`). The next run writing the same output finds and removes it, and only what is
 * stale: a temporary output of a process still running, or a fresh one from another host, stays.
 */

const CHILD = resolve(import.meta.dirname, 'support/write-child.mjs');
const scratch = useScratchDirs();

let dir: string;
let compiled: string;
let layout: string;
let image: TestImage;
beforeAll(async () => {
  dir = scratch('nix2oci-leftovers-');
  compiled = await compileForChild(['src/output/read.ts', 'src/output/write.ts', 'src/util/cleanup.ts']);
  image = await writeTestImage(join(dir, 'image'), { layers: [randomLayer('a', 50_000), randomLayer('b', 20_000)] });
  layout = join(dir, 'source-layout');
  writeOciLayout(layout, image);
});
afterAll(() => {
  if (compiled) rmSync(dirname(compiled), { recursive: true, force: true });
});

/** Starts a write of `output` in a child that stalls mid-write, and returns it once it has stalled. */
async function stalledWrite(format: OutputFormat, output: string) {
  const child = spawn(process.execPath, [CHILD, compiled, layout, format, output], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<NodeJS.Signals | null>((done) => child.on('exit', (_code, signal) => done(signal)));
  await new Promise<void>((stalled, failed) => {
    child.stdout.on('data', (d: Buffer) => d.toString().includes('stalled') && stalled());
    void exited.then((signal) => failed(new Error(`child exited (${signal}) before stalling: ${stderr}`)));
  });
  return { child, exited };
}

describe('leftovers of killed runs', () => {
  it.each(['oci-archive', 'docker-archive', 'oci-layout'] as OutputFormat[])('a %s write killed with SIGKILL leaves a temporary that the next write removes', async (format) => {
    const parent = join(dir, `killed-${format}`);
    mkdirSync(parent);
    const output = join(parent, 'image');
    const { child, exited } = await stalledWrite(format, output);
    child.kill('SIGKILL');
    expect(await exited).toBe('SIGKILL');
    const left = readdirSync(parent);
    expect(left).toEqual([expect.stringMatching(new RegExp(`^\\.image\\.${child.pid}-[0-9a-f]{8}-[0-9a-f]{12}\\.tmp$`))]);

    // A write of another output in the same directory leaves it alone; the next write of this one removes it.
    await writeImage(image, { format, output: join(parent, 'other') });
    expect(readdirSync(parent).sort()).toEqual([left[0], 'other'].sort());
    await writeImage(image, { format, output });
    expect(readdirSync(parent).sort()).toEqual(['image', 'other']);
  });

  it('keeps the temporary output of a run still going', async () => {
    const parent = join(dir, 'running');
    mkdirSync(parent);
    const output = join(parent, 'image');
    const { child, exited } = await stalledWrite('oci-archive', output);
    try {
      expect(await removeLeftovers(output)).toEqual([]);
      expect(readdirSync(parent)).toHaveLength(1);
    } finally {
      child.kill('SIGKILL');
      await exited;
    }
    expect(await removeLeftovers(output)).toHaveLength(1);
    expect(readdirSync(parent)).toEqual([]);
  });

  it('removes older versions’ and other hosts’ leftovers only once they are an hour old', async () => {
    const parent = join(dir, 'aged');
    mkdirSync(parent);
    const output = join(parent, 'image.tar');
    const names = {
      legacyFile: '.image.tar.0123456789ab.tmp',
      legacyDir: '.image.tar.tmp-AbC123',
      legacyOld: '.image.tar.tmp-AbC123.old',
      otherHost: '.image.tar.4242-00000000-0123456789ab.tmp',
    };
    const make = (name: string) => {
      if (name.includes('tmp-')) mkdirSync(join(parent, name));
      else writeFileSync(join(parent, name), 'x');
    };
    for (const name of Object.values(names)) make(name);
    writeFileSync(join(parent, '.image.tar.notes'), 'not ours');
    writeFileSync(join(parent, '.other.tar.0123456789ab.tmp'), 'another output');
    // Fresh: nothing says their writer is gone.
    expect(await removeLeftovers(output)).toEqual([]);
    const twoHoursAgo = new Date(Date.now() - 2 * 3600_000);
    for (const name of Object.values(names)) utimesSync(join(parent, name), twoHoursAgo, twoHoursAgo);
    expect((await removeLeftovers(output)).sort()).toEqual(Object.values(names).sort());
    expect(readdirSync(parent).sort()).toEqual(['.image.tar.notes', '.other.tar.0123456789ab.tmp']);
  });

  it('push --digestfile removes them too', async () => {
    const parent = join(dir, 'digest');
    mkdirSync(parent);
    const file = join(parent, 'digest.txt');
    // A pid that cannot be running: above the kernel's pid_max.
    writeFileSync(join(parent, `.digest.txt.99999999-${(await hostTag(parent))}-0123456789ab.tmp`), 'left');
    await writeFileAtomically(file, 'sha256:abc');
    expect(readdirSync(parent)).toEqual(['digest.txt']);
  });
});

/** This host's tag, as the writer puts it in temporary names (read back from a write that stalls). */
async function hostTag(parent: string): Promise<string> {
  const probe = join(parent, 'probe');
  const { child, exited } = await stalledWrite('oci-archive', probe);
  const [name] = readdirSync(parent).filter((n) => n.startsWith('.probe.'));
  child.kill('SIGKILL');
  await exited;
  await removeLeftovers(probe);
  return /^\.probe\.\d+-([0-9a-f]{8})-/.exec(name!)![1]!;
}
