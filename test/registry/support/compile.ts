import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';

const root = resolve(import.meta.dirname, '../../..');

/**
 * Compiles `entries` (paths under src/, and what they import) to JavaScript in a temp directory
 * (remove it with `rmSync(dirname(outDir))`),
 * so a test can run the current source in a child process it can kill. Type errors elsewhere in
 * the tree do not stop the emit; a missing output does.
 */
export async function compileForChild(entries: string[]): Promise<string> {
  // Inside the checkout (git-ignored), so the compiled modules resolve undici & co. from node_modules.
  const cache = join(root, 'node_modules', '.cache');
  mkdirSync(cache, { recursive: true });
  const dir = mkdtempSync(join(cache, 'nix2oci-test-compiled-'));
  const outDir = join(dir, 'out');
  writeFileSync(
    join(dir, 'tsconfig.json'),
    JSON.stringify({
      extends: join(root, 'tsconfig.json'),
      compilerOptions: { rootDir: join(root, 'src'), outDir, declaration: false, sourceMap: false, noEmitOnError: false },
      files: entries.map((e) => join(root, e)),
      include: [],
    }),
  );
  await promisify(execFile)(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', join(dir, 'tsconfig.json')]).catch(
    () => {}, // type errors in files this test does not use; the check below is what matters
  );
  for (const entry of entries) {
    const out = join(outDir, entry.replace(/^src\//, '').replace(/\.ts$/, '.js'));
    if (!existsSync(out)) throw new Error(`compiling ${entry} produced no ${out}`);
  }
  return outDir;
}

/** The child-process runner that pushes an OCI layout with the compiled pushImage. */
export const PUSH_CHILD = resolve(import.meta.dirname, 'push-child.mjs');

/** The child-process runner for `nix2oci push …` with the CLI's error handling. */
export const CLI_CHILD = resolve(import.meta.dirname, 'cli-child.mjs');
