import { rmSync } from 'node:fs';

/**
 * Temporary files and directories to remove if the process stops early (an error, SIGINT, SIGTERM),
 * so an interrupted build leaves no half-written output behind. Removal is synchronous: it must work
 * from a signal handler right before exit.
 */
const pending = new Set<string>();

export function removeOnExit(path: string): () => void {
  pending.add(path);
  return () => {
    pending.delete(path);
  };
}

export function runCleanups(): void {
  for (const path of pending) {
    try {
      rmSync(path, { recursive: true, force: true });
    } catch {
      // Best effort: the process is stopping anyway.
    }
  }
  pending.clear();
}
