import type { BlobOutcome, BlobProgress } from './blob-upload.js';

/**
 * What a push tells whoever watches it (the CLI draws it): each blob's bytes, retries and outcome,
 * and notes. The registry client prints nothing itself.
 */
export interface PushProgress {
  /** A blob's upload begins (it is called when its turn in the queue comes, not before). */
  blob(digest: string, size: number, label?: string): BlobReporter;
  note(message: string): void;
  stop(): void;
}

export interface BlobReporter extends BlobProgress {
  finished(outcome: BlobOutcome): void;
}

/** Tells nobody. */
export const silentProgress: PushProgress = {
  blob: () => ({ transferred() {}, retrying() {}, finished() {} }),
  note() {},
  stop() {},
};
