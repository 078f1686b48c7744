import { InvalidArgumentError } from 'commander';
import { UserError } from '../util/errors.js';
import { parseByteSize } from '../util/units.js';

/**
 * The parsers of every command's flags. Those given to commander throw InvalidArgumentError, which it
 * shows as a usage error; `wholeNumberFlag` and `sizeFlag` check a value taken as text, with one line.
 */

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

/** A whole number given as `flag`'s text, or a one-line UserError. */
export function wholeNumberFlag(text: string, flag: string): number {
  if (!/^\d+$/.test(text)) throw new UserError(`${flag} takes a whole number, got ${JSON.stringify(text)}`);
  return Number(text);
}

/** `500M`, `10G`, `1.5GiB`, `2048`: a size in bytes with binary units, given as `flag`'s text, or a one-line UserError. */
export function sizeFlag(text: string, flag: string, { zero = true }: { zero?: boolean } = {}): number {
  const size = parseByteSize(text);
  if (size === null || (!zero && size === 0)) throw new UserError(`${flag} takes a size such as 500M, 10G or 2048 (bytes), got ${JSON.stringify(text)}`);
  return size;
}
