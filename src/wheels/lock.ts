import { createHash } from 'node:crypto';
import { createReadStream, readFileSync, statSync } from 'node:fs';
import { satisfies, valid } from '@renovatebot/pep440';
import { UserError } from '../util/errors.js';
import { evaluateMarker, normalizeName, parseRequirement, Pep508Error, type Marker, type MarkerEnvironment } from './checks/pep508.js';
import type { Problem } from './checks/problems.js';
import type { WheelInfo } from './wheel-info.js';

/**
 * A lock of the wheels a build may install, in the form `pip install --require-hashes -r FILE` takes
 * (what `pip-compile --generate-hashes` and `uv pip compile --generate-hashes` write):
 *
 *     # reviewed 2025-06-01
 *     torch==2.13.0+cpu \
 *         --hash=sha256:0f3c…
 *     numpy==2.1.0 ; python_version >= "3.10" --hash=sha256:9a1e… --hash=sha256:77b2…
 *
 * Read as pip reads a requirements file: a line ending in `\` goes on with the next, `#` at the start
 * of a line or after whitespace starts a comment, options about where pip looks for packages
 * (`--index-url`, `--find-links`, …) are allowed and mean nothing here. Every requirement must pin one
 * version (`==` without a wildcard, or `===`) and give at least one `--hash` (sha256, sha384 or sha512),
 * as pip's hash-checking mode demands.
 *
 * The check, before anything is installed: every wheel is pinned (name and version) and its file's
 * hash is one of its pin's; every pin whose marker holds for the image has a wheel.
 */

export interface LockEntry {
  /** The name as written. */
  name: string;
  /** `==` or `===`. */
  operator: '==' | '===';
  version: string;
  hashes: { algorithm: HashAlgorithm; hex: string }[];
  marker: Marker | null;
  /** The line the requirement starts on (1-based). */
  line: number;
}

type HashAlgorithm = 'sha256' | 'sha384' | 'sha512';
const HASH_LENGTH: Record<HashAlgorithm, number> = { sha256: 64, sha384: 96, sha512: 128 };

/** Options of pip's requirements files that say where to look for packages: allowed, and ignored. */
const IGNORED_OPTIONS = new Set([
  '-i',
  '--index-url',
  '--extra-index-url',
  '--no-index',
  '-f',
  '--find-links',
  '--trusted-host',
  '--pre',
  '--prefer-binary',
  '--only-binary',
  '--no-binary',
  '--require-hashes',
  '--use-feature',
]);
/** Options that would bring wheels or pins from elsewhere: a lock is one reviewed file. */
const REFUSED_OPTIONS: Record<string, string> = {
  '-r': 'another requirements file',
  '--requirement': 'another requirements file',
  '-c': 'a constraints file',
  '--constraint': 'a constraints file',
  '-e': 'an editable install',
  '--editable': 'an editable install',
};

const MAX_LOCK_BYTES = 16 << 20;

/** Reads and parses a lock file; a problem with it is a UserError naming the file and line. */
export function readWheelLock(file: string): LockEntry[] {
  let text: string;
  try {
    const stat = statSync(file);
    if (!stat.isFile()) throw new UserError(`${file}: the wheel lock is not a regular file`);
    if (stat.size > MAX_LOCK_BYTES) throw new UserError(`${file}: ${stat.size} bytes is too large for a wheel lock (at most 16 MiB)`);
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if (err instanceof UserError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw new UserError(`${file}: cannot read the wheel lock${code === 'ENOENT' ? ': no such file' : code ? ` (${code})` : ''}`);
  }
  return parseWheelLock(text, file);
}

export function parseWheelLock(text: string, file: string): LockEntry[] {
  const entries: LockEntry[] = [];
  for (const { line, text: logical } of logicalLines(text)) {
    const where = `${file}:${line}`;
    const content = logical.replace(COMMENT, '').trim();
    if (content === '') continue;
    if (content.startsWith('-')) {
      const option = /^(-[A-Za-z]|--[A-Za-z-]+)/.exec(content)![1]!;
      if (REFUSED_OPTIONS[option]) throw new UserError(`${where}: ${option} (${REFUSED_OPTIONS[option]}) is not allowed in a wheel lock: list every pin in it`);
      if (!IGNORED_OPTIONS.has(option)) throw new UserError(`${where}: unknown option ${option}`);
      continue;
    }
    entries.push(parseEntry(content, line, where));
  }
  return entries;
}

/** `#` at the start of a line or after whitespace, to the end (pip's COMMENT_RE). */
const COMMENT = /(^|\s+)#.*$/;

/** pip's join_lines: a line ending in `\` goes on with the next; a comment line never does. */
function* logicalLines(text: string): Generator<{ line: number; text: string }> {
  const lines = text.replace(/^\ufeff/, '').split(/\r?\n/);
  let pending: string[] = [];
  let first = 0;
  for (const [i, line] of lines.entries()) {
    const comment = /^\s*#/.test(line);
    if (!line.endsWith('\\') || comment) {
      if (pending.length > 0) {
        // A comment line ends the continued line (pip keeps it, as a comment, which removes it).
        yield { line: first, text: pending.join('') + (comment ? ` ${line}` : line) };
        pending = [];
      } else {
        yield { line: i + 1, text: line };
      }
    } else {
      if (pending.length === 0) first = i + 1;
      pending.push(line.replace(/\\+$/, ''));
    }
  }
  if (pending.length > 0) yield { line: first, text: pending.join('') };
}

function parseEntry(content: string, line: number, where: string): LockEntry {
  // pip's break_args_options: the requirement is every word before the first starting with '-'.
  const words = content.split(/\s+/);
  const optionAt = words.findIndex((w) => w.startsWith('-'));
  const requirementText = (optionAt < 0 ? words : words.slice(0, optionAt)).join(' ');
  const options = optionAt < 0 ? [] : words.slice(optionAt);

  let requirement;
  try {
    requirement = parseRequirement(requirementText);
  } catch (err) {
    if (err instanceof Pep508Error) throw new UserError(`${where}: "${requirementText}" is not a requirement: ${err.message}`);
    throw err;
  }
  const shape = 'expected name==version --hash=sha256:… (the form pip --require-hashes takes)';
  if (requirement.url !== null) throw new UserError(`${where}: ${requirement.name} @ ${requirement.url}: a URL is not a pinned version; ${shape}`);
  const pin = /^(===|==)([^,*]+)$/.exec(requirement.specifier);
  if (!pin) {
    throw new UserError(`${where}: ${requirement.name}${requirement.specifier} does not pin one version; ${shape}`);
  }

  const hashes: LockEntry['hashes'] = [];
  for (let i = 0; i < options.length; i++) {
    const word = options[i]!;
    let value: string | undefined;
    if (word.startsWith('--hash=')) value = word.slice('--hash='.length);
    else if (word === '--hash') value = options[++i];
    else throw new UserError(`${where}: ${word}: only --hash may follow a requirement in a wheel lock`);
    const hash = /^(sha256|sha384|sha512):([0-9a-fA-F]+)$/.exec(value ?? '');
    if (!hash || hash[2]!.length !== HASH_LENGTH[hash[1] as HashAlgorithm]) {
      throw new UserError(`${where}: --hash ${value ?? '(nothing)'}: expected sha256:<64 hex digits> (or sha384, sha512)`);
    }
    hashes.push({ algorithm: hash[1] as HashAlgorithm, hex: hash[2]!.toLowerCase() });
  }
  if (hashes.length === 0) throw new UserError(`${where}: ${requirement.name}${requirement.specifier} has no --hash; ${shape}`);
  return { name: requirement.name, operator: pin[1] as LockEntry['operator'], version: pin[2]!, hashes, marker: requirement.marker, line };
}

/**
 * The wheels against the lock: one problem per wheel not pinned, pinned at another version or with
 * another hash, and per pin (whose marker holds for `environment`) without a wheel.
 */
export async function checkWheelLock(options: {
  file: string;
  entries: LockEntry[];
  wheels: Pick<WheelInfo, 'file' | 'name' | 'version' | 'sha256'>[];
  environment: MarkerEnvironment;
}): Promise<Problem[]> {
  const { file, environment } = options;
  const pins = new Map<string, LockEntry>();
  for (const entry of options.entries) {
    if (entry.marker !== null && !evaluateMarker(entry.marker, environment)) continue;
    const key = normalizeName(entry.name);
    const before = pins.get(key);
    if (before) throw new UserError(`${file}:${entry.line}: ${entry.name} is pinned twice (also on line ${before.line})`);
    pins.set(key, entry);
  }

  const problems: Problem[] = [];
  const problem = (kind: Problem['kind'], message: string, fix: string, wheel?: string) =>
    problems.push({ severity: 'error', check: 'lock', kind, message, fix, ...(wheel !== undefined && { wheel: baseName(wheel) }) });
  const given = new Set<string>();
  for (const wheel of options.wheels) {
    const key = normalizeName(wheel.name);
    given.add(key);
    const name = baseName(wheel.file);
    const pin = pins.get(key);
    if (!pin) {
      problem('not-in-lock', `${file}: ${name}: ${wheel.name} is not in the lock`, `once it is reviewed, add ${wheel.name}==${wheel.version} --hash=sha256:${wheel.sha256}`, wheel.file);
      continue;
    }
    const pinned = `${pin.name}${pin.operator}${pin.version}`;
    if (!versionMatches(wheel.version, pin)) {
      problem('version-mismatch', `${file}:${pin.line}: ${pinned} is pinned, but ${name} is version ${wheel.version}`, `give the wheel of ${pinned}, or lock ${wheel.version} once it is reviewed`, wheel.file);
      continue;
    }
    const actual = await wheelHashes(wheel, new Set(pin.hashes.map((h) => h.algorithm)));
    if (!pin.hashes.some((h) => actual.get(h.algorithm) === h.hex)) {
      const algorithm = pin.hashes.some((h) => h.algorithm === 'sha256') ? 'sha256' : pin.hashes[0]!.algorithm;
      problem(
        'hash-mismatch',
        `${file}:${pin.line}: ${name} has ${algorithm}:${actual.get(algorithm)}, not the hash${pin.hashes.length === 1 ? '' : ` (one of ${pin.hashes.length})`} pinned for ${pinned}`,
        'this is not the file that was reviewed: get the pinned one',
        wheel.file,
      );
    }
  }
  for (const [key, pin] of pins) {
    if (given.has(key)) continue;
    problem('pinned-wheel-missing', `${file}:${pin.line}: ${pin.name}${pin.operator}${pin.version} is pinned, but no wheel of it was given`, `give its wheel (--wheel), or take it out of the lock`);
  }
  return problems;
}

function versionMatches(version: string, pin: LockEntry): boolean {
  if (pin.operator === '===') return version === pin.version;
  if (!valid(version)) return false;
  return satisfies(version, `==${pin.version}`, { prereleases: true });
}

/** The wheel file's digests in the algorithms asked for (its sha256 is known already). */
async function wheelHashes(wheel: Pick<WheelInfo, 'file' | 'sha256'>, algorithms: Set<HashAlgorithm>): Promise<Map<HashAlgorithm, string>> {
  const result = new Map<HashAlgorithm, string>([['sha256', wheel.sha256]]);
  const others = [...algorithms].filter((a) => a !== 'sha256');
  if (others.length === 0) return result;
  const hashes = others.map((a) => [a, createHash(a)] as const);
  for await (const chunk of createReadStream(wheel.file)) for (const [, h] of hashes) h.update(chunk as Buffer);
  for (const [a, h] of hashes) result.set(a, h.digest('hex'));
  return result;
}

function baseName(file: string): string {
  return file.slice(file.lastIndexOf('/') + 1);
}
