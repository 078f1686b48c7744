import { storePathName } from '../nix/store-path.js';
import { closestWord } from './suggest.js';

/**
 * The package name without its version, as Nix's parseDrvName splits it: the name ends at the first
 * `-` followed by a digit. `python3-3.11.9` → `python3`, `rocm-core-6.0.2` → `rocm-core`,
 * `gcc-13.2.0-lib` → `gcc`, `demo-app` → `demo-app`.
 */
export function packageName(name: string): string {
  const match = /-[0-9]/.exec(name);
  return match ? name.slice(0, match.index) : name;
}

/**
 * Store paths that `name` designates: the paths named exactly `name` if there are any, otherwise those
 * named `name-<version>` with the version starting with a digit (`python3` → `python3-3.11.9`).
 * An exact name wins so that a path can always be named unambiguously by its full name.
 */
export function matchStorePaths(paths: Iterable<string>, name: string): string[] {
  const exact: string[] = [];
  const versioned: string[] = [];
  for (const path of paths) {
    const candidate = storePathName(path);
    if (candidate === name) exact.push(path);
    else if (candidate.startsWith(`${name}-`) && /[0-9]/.test(candidate.charAt(name.length + 1))) versioned.push(path);
  }
  return (exact.length > 0 ? exact : versioned).sort();
}

/** A known name close to `name`, for "did you mean"; package names are offered before full names. */
export function suggestStoreName(paths: Iterable<string>, name: string): string | undefined {
  const names = new Set<string>();
  for (const path of paths) {
    const full = storePathName(path);
    names.add(packageName(full));
    names.add(full);
  }
  return closestWord(name, [...names].sort());
}
