import v8 from 'node:v8';

/**
 * The main thread's young generation, held at the size V8 starts it with (two 1 MiB semi-spaces).
 * V8 doubles it each time enough objects survive a minor collection, up to 32 MiB on Node 20, 64 MiB
 * on Node 26 and 128 MiB on Node 24, and a build's main thread always has objects in flight: the
 * young generation alone was a third of the ML stack's peak memory (its peak 300 MiB on Node 24,
 * 220 with the hold). A build takes no longer for it: what survives a minor collection here is
 * small, and the big buffers live outside the heap (docs/benchmarks.md).
 *
 * Node's way to set this is `--max-semi-space-size` on its command line, which a CLI started as
 * `nix2oci` cannot pass. `--semi-space-growth-factor=1` through v8.setFlagsFromString stops the
 * growth instead. V8's flags are the process's, and V8 resets this one to its minimum (2) whenever an
 * isolate starts: each worker thread sets it again as the first thing it runs (`threadPrologue`).
 */

const HOLD = '--semi-space-growth-factor=1';
/**
 * The Node lines the hold is tested under (test/util/young-generation.test.ts). V8 prints an error on
 * every run for a flag it does not know, so a later line, whose V8 may have dropped it, goes without.
 */
const NEWEST_TESTED = 26;
let held = false;

/** Holds the young generation for the rest of the process (the CLI calls this first). */
export function holdYoungGeneration(): void {
  if (Number(process.versions.node.split('.')[0]) > NEWEST_TESTED) return;
  held = true;
  v8.setFlagsFromString(HOLD);
}

/** Source for a worker thread to run before anything else: sets the hold again, if there is one. */
export function threadPrologue(): string {
  return held ? `require('node:v8').setFlagsFromString(${JSON.stringify(HOLD)});\n` : '';
}
