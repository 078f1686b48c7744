import { readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { UserError } from '../util/errors.js';

/**
 * The wheel files named by `--wheel` and the recipe's `wheels`: a file is itself, a directory is every
 * `*.whl` in it (not its subdirectories), sorted by name so that every run installs them in one order.
 * A path named twice (a directory and a file in it) is installed once, where it first came.
 */
export function expandWheelPaths(paths: readonly string[]): string[] {
  const files: string[] = [];
  const seen = new Set<string>();
  const add = (file: string) => {
    const key = resolve(file);
    if (seen.has(key)) return;
    seen.add(key);
    files.push(file);
  };
  for (const path of paths) {
    const stat = statOf(path);
    if (!stat.isDirectory()) {
      add(path);
      continue;
    }
    const wheels = readdirSync(path, { withFileTypes: true })
      .filter((e) => e.name.endsWith('.whl') && (e.isFile() || (e.isSymbolicLink() && statOf(join(path, e.name)).isFile())))
      .map((e) => e.name)
      .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    if (wheels.length === 0) throw new UserError(`${path}: the directory holds no *.whl file`);
    for (const name of wheels) add(join(path, name));
  }
  return files;
}

function statOf(path: string) {
  try {
    return statSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new UserError(`${path}: ${code === 'ENOENT' ? 'no such wheel file or directory' : `cannot read (${code ?? String(err)})`}`);
  }
}
