import v8 from 'node:v8';

/**
 * The main thread's young generation, held at the size V8 starts it with (two 1 MiB semi-spaces).
 * V8 doubles it each time enough objects survive a minor collection, up to 32 MiB on Node 20, 64 MiB
 * on Node 26 and 128 MiB on Node 24, and a build's main thread always has objects in flight: the
 * young generation alone was a third of the ML stack's peak memory (its peak 300 MiB on Node 24,
 * 220 with the hold). The time a build takes does not change measurably: what survives a minor
 * collection here is small, and the big buffers live outside the heap (docs/benchmarks.md).
 *
 * Node's way to set this is `--max-semi-space-size` on its command line, which a CLI started as
 * `nix2oci` cannot pass. `--semi-space-growth-factor=1` through v8.setFlagsFromString stops the
 * growth instead; V8 resets that flag to its minimum (2) whenever an isolate starts, so each worker
 * thread's start (`onThreadStarted`) sets it again. Worker threads have a small limit of their own.
 */

let held = false;

/** Holds the young generation for the rest of the process (the CLI calls this first). */
export function holdYoungGeneration(): void {
  held = true;
  v8.setFlagsFromString('--semi-space-growth-factor=1');
}

/** A worker thread's isolate has started (it reset the flag): the hold, if any, is set again. */
export function onThreadStarted(): void {
  if (held) v8.setFlagsFromString('--semi-space-growth-factor=1');
}
