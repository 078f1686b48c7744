import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import ts from 'typescript';

const root = resolve(import.meta.dirname, '../../..');

/**
 * Transpiles `entries` (paths under src/) and every module they import, relatively, to JavaScript
 * in a temp directory, so a test can run the current source in a child process it can kill.
 * No type checking (vitest does none either; `tsc` does that): it takes a moment, not a build.
 * The directory is inside the checkout (node_modules/.cache) so the output resolves undici & co.;
 * remove it with `rmSync(dirname(outDir), { recursive: true })`.
 */
export async function compileForChild(entries: string[]): Promise<string> {
  const cache = join(root, 'node_modules', '.cache');
  mkdirSync(cache, { recursive: true });
  const outDir = join(mkdtempSync(join(cache, 'nix2oci-test-compiled-')), 'out');
  const pending = entries.map((e) => join(root, e));
  const done = new Set<string>();
  while (pending.length > 0) {
    const file = pending.pop()!;
    if (done.has(file)) continue;
    done.add(file);
    const source = readFileSync(file, 'utf8');
    const { outputText } = ts.transpileModule(source, {
      fileName: file,
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, sourceMap: false },
    });
    const out = join(outDir, relative(join(root, 'src'), file).replace(/\.ts$/, '.js'));
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(out, outputText);
    // Relative imports name the .js the .ts becomes (NodeNext style).
    for (const match of source.matchAll(/(?:from|import)\s*\(?\s*['"](\.{1,2}\/[^'"]+)\.js['"]/g)) {
      pending.push(resolve(dirname(file), `${match[1]}.ts`));
    }
  }
  return outDir;
}

/** The child-process runner that pushes an OCI layout with the compiled push (and the CLI's display). */
export const PUSH_CHILD = resolve(import.meta.dirname, 'push-child.mjs');

/** The child-process runner for `nix2oci push …` with the CLI's error handling. */
export const CLI_CHILD = resolve(import.meta.dirname, 'cli-child.mjs');
