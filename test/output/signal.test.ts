import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeImage, type OutputFormat } from '../../src/output/write.js';
import { compileForChild } from '../registry/support/compile.js';
import { demoImage, tempDir } from './fixtures.js';

const CHILD = resolve(import.meta.dirname, 'support/write-child.mjs');

let dir: string;
let compiled: string;
let layout: string;
beforeAll(async () => {
  dir = tempDir();
  compiled = await compileForChild(['src/output/read.ts', 'src/output/write.ts', 'src/util/cleanup.ts']);
  const { image } = await demoImage(dir);
  layout = join(dir, 'source-layout');
  await writeImage(image, { format: 'oci-layout', output: layout });
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
  if (compiled) rmSync(dirname(compiled), { recursive: true, force: true });
});

describe('an interrupted write', () => {
  it.each(['oci-archive', 'docker-archive', 'oci-layout'] as OutputFormat[])('leaves no %s output and no temporary file after SIGINT', async (format) => {
    const parent = join(dir, `interrupted-${format}`);
    mkdirSync(parent);
    const child = spawn(process.execPath, [CHILD, compiled, layout, format, join(parent, 'image')], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((done) => child.on('exit', (code) => done(code)));
    await new Promise<void>((stalled, failed) => {
      child.stdout.on('data', (d: Buffer) => d.toString().includes('stalled') && stalled());
      void exited.then((code) => failed(new Error(`child exited with ${code} before stalling: ${stderr}`)));
    });
    // Mid-write: the temporary output is there, the output is not.
    expect(readdirSync(parent)).toEqual([expect.stringMatching(/^\.image\./)]);
    child.kill('SIGINT');
    expect(await exited).toBe(130);
    expect(readdirSync(parent)).toEqual([]);
  });
});
