import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { compileWriter, NODE_VERSIONS, nodeBinary } from '../helpers/node-versions.js';

/**
 * The CLI holds the main thread's young generation at its starting size (util/young-generation.ts)
 * through a V8 flag that V8 resets whenever an isolate starts, so each thread sets it again first.
 * Under every supported Node line, with a worker thread started before the main thread allocates as a
 * build does (many objects surviving minor collections), the young generation must stay at two
 * semi-spaces of 1 MiB with the hold, and grow without it (else this test would not see a hold that
 * stopped working).
 */

const script = `
import v8 from 'node:v8';
import { Threads } from './util/threads.js';
import { holdYoungGeneration } from './util/young-generation.js';
const newSpace = () => v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size;
const start = newSpace();
if (process.env.HOLD === '1') holdYoungGeneration();
const threads = new Threads(1);
const connection = threads.thread(0).connect({ name: 'echo', source: '(port) => port.on("message", (m) => port.postMessage(m))' }, () => {});
connection.busy();
// The thread has run its prologue once it answers.
await new Promise((resolve) => { connection.port.once('message', resolve); connection.post('ping'); });
connection.close();
threads.stopIdle();
const kept = [];
for (let i = 0; i < 3e6; i++) {
  const o = { a: 'x' + i, b: i, c: [i] };
  if (i % 3 === 0) kept.push(o);
  if (kept.length > 2e5) kept.length = 0;
}
console.log(JSON.stringify({ node: process.version, start, end: newSpace() }));
`;

describe('the young generation hold', () => {
  let compiled: string;

  beforeAll(() => {
    compiled = compileWriter(script, 'src/util/threads.ts');
  });

  afterAll(() => rmSync(compiled, { recursive: true, force: true }));

  it('keeps the main thread’s young generation at its start under Node 20, 22, 24 and 26, and it grows without', () => {
    for (const node of [process.execPath, ...NODE_VERSIONS.map(nodeBinary)]) {
      const run = (hold: boolean) =>
        JSON.parse(execFileSync(node, [join(compiled, 'run.mjs')], { encoding: 'utf8', env: { ...process.env, HOLD: hold ? '1' : '0' } })) as { node: string; start: number; end: number };
      const held = run(true);
      const free = run(false);
      // Two semi-spaces of 1 MiB at most with the hold; 32 to 128 MiB without.
      expect({ node: held.node, held: held.end <= 2 << 20 }).toEqual({ node: held.node, held: true });
      expect({ node: free.node, grew: free.end >= 16 << 20 }).toEqual({ node: free.node, grew: true });
    }
  });
});
