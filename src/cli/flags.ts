import { InvalidArgumentError } from 'commander';
import { parseByteSize } from '../util/units.js';

/** Parsers for the push flags, as commander calls them (InvalidArgumentError shows as a usage error). */

/** For repeatable flags: commander passes the values so far (none before the first). */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

export function parseBoolean(value: string | boolean): boolean {
  if (typeof value === 'boolean') return value;
  if (/^(true|1|yes)$/i.test(value)) return true;
  if (/^(false|0|no)$/i.test(value)) return false;
  throw new InvalidArgumentError('expected true or false');
}

export function parseWholeNumber(value: string): number {
  if (!/^\d+$/.test(value)) throw new InvalidArgumentError('expected a whole number');
  return Number(value);
}

/** `65536`, `512K`, `16M`, `16MiB`, `1G` (binary units). */
export function parseSize(value: string): number {
  const size = parseByteSize(value);
  if (size === null || size === 0) throw new InvalidArgumentError('expected a size such as 16M or 1G');
  return size;
}
