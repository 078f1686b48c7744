import { basename } from 'node:path';
import { UserError } from '../util/errors.js';

/** One tag triple of a wheel (PEP 425), e.g. `cp311` / `cp311` / `manylinux_2_28_x86_64`. */
export interface WheelTag {
  python: string;
  abi: string;
  platform: string;
}

/** What a wheel's file name says (PEP 427): `{distribution}-{version}(-{build})?-{python}-{abi}-{platform}.whl`. */
export interface WheelFileName {
  /** The distribution as spelled in the file name (`typing_extensions`). */
  distribution: string;
  /** PEP 503 normalized name (`typing-extensions`). */
  name: string;
  version: string;
  build: string | null;
  /** Every tag the (possibly compressed, `py2.py3-none-any`) tag set expands to, in file-name order. */
  tags: WheelTag[];
}

/** PEP 503 normalization: runs of `-`, `_`, `.` become one `-`, lowercased. */
/** A project name in PEP 503's normal form: lowercase, runs of `-`, `_`, `.` as one `-`. */
export function normalizeName(name: string): string {
  return name.replace(/[-_.]+/g, '-').toLowerCase();
}

/** Parses a wheel's file name; `file` may be a path (only its base name is read). */
export function parseWheelFileName(file: string): WheelFileName {
  const base = basename(file);
  const fail = (why: string) =>
    new UserError(`${file}: not a wheel file name (${why}; expected {name}-{version}[-{build}]-{python}-{abi}-{platform}.whl)`);
  if (!base.endsWith('.whl')) throw fail('it does not end in .whl');
  const parts = base.slice(0, -'.whl'.length).split('-');
  if (parts.length !== 5 && parts.length !== 6) throw fail(`${parts.length} dash-separated parts`);
  if (parts.some((p) => p === '')) throw fail('an empty part');
  const [distribution, version] = parts as [string, string];
  const build = parts.length === 6 ? parts[2]! : null;
  if (build !== null && !/^\d/.test(build)) throw fail(`build tag ${build} does not start with a digit`);
  const [pythons, abis, platforms] = parts.slice(-3).map((set) => set.split('.')) as [string[], string[], string[]];
  if ([...pythons, ...abis, ...platforms].some((t) => t === '')) throw fail('an empty tag');
  const tags: WheelTag[] = [];
  for (const python of pythons) for (const abi of abis) for (const platform of platforms) tags.push({ python, abi, platform });
  return { distribution, name: normalizeName(distribution), version, build, tags };
}

export function formatTag(tag: WheelTag): string {
  return `${tag.python}-${tag.abi}-${tag.platform}`;
}
