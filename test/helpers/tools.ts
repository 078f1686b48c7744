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
 * What every machine that runs the tests has: a POSIX system's shell, coreutils, GNU tar and gzip.
 * Tests call these without asking; they are all `npm run test:unit` may use besides Node.
 */
export const BASE_TOOLS: readonly string[] = ['sh', 'bash', 'tar', 'gzip', 'gunzip', 'cp', 'mkdir', 'chmod', 'find', 'mkfifo', 'sha256sum'];

/**
 * `npm run test:unit` (vitest.unit.config.ts) sets this: the fast loop runs no test that needs a tool
 * beyond BASE_TOOLS, whether or not the machine has it. `npm test` runs those too.
 */
export const UNIT_SCOPE = process.env.NIX2OCI_TEST_SCOPE === 'unit';

/**
 * For `describe.runIf(tools(...))` style guards: returns true when every tool exists.
 * In CI (env CI set) a missing tool is a failure, never a silent skip.
 * In the unit loop, a test needing more than BASE_TOOLS is left to `npm test`, with a note saying so.
 */
export function tools(...names: string[]): boolean {
  if (UNIT_SCOPE) {
    const beyond = names.filter((n) => !BASE_TOOLS.includes(n));
    if (beyond.length > 0) {
      console.info(`unit loop: leaving to npm test what needs ${beyond.join(', ')}`);
      return false;
    }
  }
  const missing = names.filter((n) => !hasTool(n));
  if (missing.length === 0) return true;
  if (process.env.CI) {
    throw new Error(`integration test needs ${missing.join(', ')} (run scripts/install-system-deps.sh)`);
  }
  console.warn(`skipping: missing ${missing.join(', ')} (run scripts/install-system-deps.sh)`);
  return false;
}
