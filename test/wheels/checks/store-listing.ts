import { execFileSync } from 'node:child_process';
import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import type { Closure, NarNode, StorePathInfo } from '../../../src/nix/types.js';
import { closureOf } from '../../helpers/nix.js';

/**
 * A Closure read from the local Nix store (references from the Nix database) and its files listed
 * from disk in NAR order: the same nodes `nix-store --dump` serialises. The checks take listing and
 * reading as functions, so these stand for the export-based ones without an export.
 */

export function localClosure(roots: string[]): Closure {
  const all = closureOf(roots);
  const paths = new Map<string, StorePathInfo>();
  const referenced = new Set<string>();
  for (const path of all) {
    const references = execFileSync('nix-store', ['-q', '--references', path], { encoding: 'utf8' }).split('\n').filter(Boolean).sort();
    for (const r of references) if (r !== path) referenced.add(r);
    paths.set(path, { path, references, deriver: null, narHash: '', narSize: 0, source: { file: path, offset: 0 } });
  }
  return { paths, roots: all.filter((p) => !referenced.has(p)) };
}

/** Nodes of a store path in NAR order (entries sorted by name bytes, depth first). */
export function* listFromDisk(info: StorePathInfo): Generator<NarNode> {
  yield* walk(info.path, '');
}

function* walk(abs: string, rel: string): Generator<NarNode> {
  const st = lstatSync(abs);
  if (st.isSymbolicLink()) {
    yield { type: 'symlink', path: rel, target: readlinkSync(abs) };
  } else if (st.isDirectory()) {
    yield { type: 'directory', path: rel };
    const names = readdirSync(abs).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    for (const name of names) yield* walk(`${abs}/${name}`, rel ? `${rel}/${name}` : name);
  } else {
    yield { type: 'regular', path: rel, executable: (st.mode & 0o111) !== 0, size: st.size };
  }
}

export async function readFromDisk(info: StorePathInfo, path: string): Promise<Buffer> {
  return readFileSync(`${info.path}/${path}`);
}
