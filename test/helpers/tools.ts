import { execFileSync } from 'node:child_process';

/** True when `name` is on PATH. */
export function hasTool(name: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * For `describe.skipIf(!tools(...))` style guards: returns true when every tool exists.
 * In CI (env CI set) a missing tool is a failure, never a silent skip.
 */
export function tools(...names: string[]): boolean {
  const missing = names.filter((n) => !hasTool(n));
  if (missing.length === 0) return true;
  if (process.env.CI) {
    throw new Error(`integration test needs ${missing.join(', ')} (run scripts/install-system-deps.sh)`);
  }
  console.warn(`skipping: missing ${missing.join(', ')} (run scripts/install-system-deps.sh)`);
  return false;
}
