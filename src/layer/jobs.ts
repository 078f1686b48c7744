import { availableParallelism } from 'node:os';
import { UserError } from '../util/errors.js';

/**
 * How many layer parts are compressed at once across every layer being written (`--jobs`), and so how
 * many cores compression uses. Each part in flight holds one 4 MiB slot and a zlib state (~300 KiB),
 * so memory is bounded by jobs × that, whatever the size or number of layers.
 */
let jobs = availableParallelism();
let inFlight = 0;
const waiting: (() => void)[] = [];

/** Sets the bound; default os.availableParallelism(). Call before writing layers (e.g. from `--jobs`). */
export function setLayerJobs(count: number): void {
  if (!Number.isInteger(count) || count < 1) throw new UserError(`--jobs must be a whole number of at least 1, got ${count}`);
  jobs = count;
  while (inFlight < jobs && waiting.length > 0) {
    inFlight++;
    waiting.shift()!();
  }
}

export function layerJobs(): number {
  return jobs;
}

/** Takes a turn to compress one part: synchronously when one is free, else once one is released. */
export function acquireCompressionTurn(): Promise<void> | undefined {
  if (inFlight < jobs) {
    inFlight++;
    return undefined;
  }
  return new Promise((resolve) => waiting.push(resolve));
}

export function releaseCompressionTurn(): void {
  // A turn passes straight to a waiter, unless setLayerJobs lowered the bound below what is in flight.
  if (inFlight > jobs || waiting.length === 0) inFlight--;
  else waiting.shift()!();
}
