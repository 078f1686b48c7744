import { createHash } from 'node:crypto';
import type { Closure, StorePathInfo } from '../../src/nix/types.js';

const BASE32 = '0123456789abcdfghijklmnpqrsvwxyz';

/** A store path with a made-up (but well-formed) hash derived from `seed`. */
export function fakeStorePath(name: string, seed = name): string {
  const digest = createHash('sha256').update(seed).digest();
  let hash = '';
  for (let i = 0; i < 32; i++) hash += BASE32[digest[i]! % 32];
  return `/nix/store/${hash}-${name}`;
}

/** A closure of the given store paths, for code that only looks at paths (no NAR behind them). */
export function fakeClosure(paths: string[]): Closure {
  const infos = new Map<string, StorePathInfo>();
  for (const path of [...paths].sort()) {
    infos.set(path, { path, references: [], deriver: null, narHash: '0'.repeat(64), narSize: 0, source: { file: '/dev/null', offset: 0 } });
  }
  return { paths: infos, roots: [...infos.keys()] };
}
