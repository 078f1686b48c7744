import { satisfies, valid, validRange } from '@renovatebot/pep440';
import { normalizeName } from '../filename.js';

/**
 * PEP 508 dependency specifiers, as found in a wheel's `Requires-Dist`:
 *   name [extras] (specifier | @ url) ; marker
 * A small recursive-descent parser and a marker evaluator with packaging's semantics
 * (version comparison when both sides are versions, else Python string comparison; `extra` normalised).
 */

export interface Requirement {
  /** The name as written. */
  name: string;
  extras: string[];
  /** Comma-joined version specifiers, e.g. `>=1.0,<2`; '' for any version. */
  specifier: string;
  /** For `name @ url` requirements. */
  url: string | null;
  marker: Marker | null;
}

export type Marker =
  | { op: 'and' | 'or'; left: Marker; right: Marker }
  | { op: 'compare'; left: MarkerValue; comparator: string; right: MarkerValue };

export type MarkerValue = { variable: string } | { literal: string };

/** Marker variables (PEP 508 names); legacy dotted names are mapped to these when parsed. */
export interface MarkerEnvironment {
  python_version: string;
  python_full_version: string;
  os_name: string;
  sys_platform: string;
  platform_release: string;
  platform_system: string;
  platform_version: string;
  platform_machine: string;
  platform_python_implementation: string;
  implementation_name: string;
  implementation_version: string;
  /** The extra being evaluated ('' when none). */
  extra: string;
}

const LEGACY_VARIABLES: Record<string, keyof MarkerEnvironment> = {
  'os.name': 'os_name',
  'sys.platform': 'sys_platform',
  'platform.version': 'platform_version',
  'platform.machine': 'platform_machine',
  'platform.python_implementation': 'platform_python_implementation',
  python_implementation: 'platform_python_implementation',
};

const VARIABLES = new Set<string>([
  'python_version',
  'python_full_version',
  'os_name',
  'sys_platform',
  'platform_release',
  'platform_system',
  'platform_version',
  'platform_machine',
  'platform_python_implementation',
  'implementation_name',
  'implementation_version',
  'extra',
]);

const VERSION_COMPARATORS = ['===', '~=', '==', '!=', '<=', '>=', '<', '>'];

export class Pep508Error extends Error {
  constructor(
    readonly reason: string,
    readonly column: number,
  ) {
    super(`${reason} at column ${column + 1}`);
    this.name = 'Pep508Error';
  }
}

/** PEP 503 normalised name: lower case, runs of `-`, `_`, `.` as one `-`. */
export { normalizeName };

/** Parses one requirement; throws {@link Pep508Error} naming the column where it went wrong. */
export function parseRequirement(text: string): Requirement {
  return new Parser(text).requirement();
}

/** Parses a marker expression alone (e.g. the part after `;`). */
export function parseMarker(text: string): Marker {
  const parser = new Parser(text);
  const marker = parser.markerOnly();
  return marker;
}

class Parser {
  private i = 0;
  constructor(private readonly s: string) {}

  requirement(): Requirement {
    this.ws();
    const name = this.identifier('a distribution name');
    this.ws();
    const extras: string[] = [];
    if (this.eat('[')) {
      this.ws();
      if (!this.eat(']')) {
        for (;;) {
          this.ws();
          extras.push(this.identifier('an extra name'));
          this.ws();
          if (this.eat(']')) break;
          this.expect(',');
        }
      }
      this.ws();
    }
    let specifier = '';
    let url: string | null = null;
    if (this.eat('@')) {
      this.ws();
      const start = this.i;
      while (this.i < this.s.length && !/\s/.test(this.s[this.i]!)) this.i++;
      url = this.s.slice(start, this.i);
      if (!url) throw this.error('expected a URL after @');
      this.ws();
    } else if (this.eat('(')) {
      specifier = this.versionMany();
      this.ws();
      this.expect(')');
      this.ws();
    } else if (this.peekComparator()) {
      specifier = this.versionMany();
    }
    let marker: Marker | null = null;
    if (this.eat(';')) {
      marker = this.markerOr();
      this.ws();
    }
    if (this.i < this.s.length) throw this.error(`unexpected ${JSON.stringify(this.s[this.i])}`);
    return { name, extras, specifier, url, marker };
  }

  markerOnly(): Marker {
    const marker = this.markerOr();
    this.ws();
    if (this.i < this.s.length) throw this.error(`unexpected ${JSON.stringify(this.s[this.i])}`);
    return marker;
  }

  private versionMany(): string {
    const parts: string[] = [];
    for (;;) {
      this.ws();
      const start = this.i;
      const comparator = this.peekComparator();
      if (!comparator) throw this.error('expected a version comparison (==, >=, ~=, …)');
      this.i += comparator.length;
      this.ws();
      const versionStart = this.i;
      while (this.i < this.s.length && /[A-Za-z0-9\-_.*+!]/.test(this.s[this.i]!)) this.i++;
      const version = this.s.slice(versionStart, this.i);
      if (!version) throw this.error(`expected a version after ${comparator}`);
      const one = `${comparator}${version}`;
      if (comparator !== '===' && !validRange(one)) {
        this.i = start;
        throw this.error(`invalid version specifier ${JSON.stringify(one)}`);
      }
      parts.push(one);
      this.ws();
      if (!this.eat(',')) break;
    }
    return parts.join(',');
  }

  private markerOr(): Marker {
    let left = this.markerAnd();
    while (this.keyword('or')) left = { op: 'or', left, right: this.markerAnd() };
    return left;
  }

  private markerAnd(): Marker {
    let left = this.markerExpr();
    while (this.keyword('and')) left = { op: 'and', left, right: this.markerExpr() };
    return left;
  }

  private markerExpr(): Marker {
    this.ws();
    if (this.eat('(')) {
      const inner = this.markerOr();
      this.ws();
      this.expect(')');
      return inner;
    }
    const left = this.markerValue();
    this.ws();
    let comparator = this.peekComparator();
    if (comparator) this.i += comparator.length;
    else if (this.keyword('in')) comparator = 'in';
    else if (this.keyword('not')) {
      if (!this.keyword('in')) throw this.error('expected "in" after "not"');
      comparator = 'not in';
    } else throw this.error('expected a marker operator (==, in, not in, …)');
    const right = this.markerValue();
    return { op: 'compare', left, comparator, right };
  }

  private markerValue(): MarkerValue {
    this.ws();
    const quote = this.s[this.i];
    if (quote === '"' || quote === "'") {
      const end = this.s.indexOf(quote, this.i + 1);
      if (end < 0) throw this.error('unterminated string');
      const literal = this.s.slice(this.i + 1, end);
      this.i = end + 1;
      return { literal };
    }
    const m = /^[A-Za-z_][A-Za-z0-9_.]*/.exec(this.s.slice(this.i));
    if (!m) throw this.error('expected a marker variable or a quoted string');
    const name = LEGACY_VARIABLES[m[0]] ?? m[0];
    if (!VARIABLES.has(name)) throw this.error(`unknown marker variable ${m[0]}`);
    this.i += m[0].length;
    return { variable: name };
  }

  private peekComparator(): string | null {
    return VERSION_COMPARATORS.find((c) => this.s.startsWith(c, this.i)) ?? null;
  }

  /** Consumes a whole word (surrounded by whitespace or punctuation) when it is next. */
  private keyword(word: string): boolean {
    const save = this.i;
    this.ws();
    if (this.s.startsWith(word, this.i) && !/[A-Za-z0-9_]/.test(this.s[this.i + word.length] ?? '')) {
      this.i += word.length;
      return true;
    }
    this.i = save;
    return false;
  }

  private identifier(what: string): string {
    const m = /^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?/.exec(this.s.slice(this.i));
    if (!m) throw this.error(`expected ${what}`);
    this.i += m[0].length;
    return m[0];
  }

  private ws(): void {
    while (this.i < this.s.length && /[ \t]/.test(this.s[this.i]!)) this.i++;
  }

  private eat(c: string): boolean {
    if (this.s.startsWith(c, this.i)) {
      this.i += c.length;
      return true;
    }
    return false;
  }

  private expect(c: string): void {
    if (!this.eat(c)) throw this.error(`expected ${JSON.stringify(c)}`);
  }

  private error(reason: string): Pep508Error {
    return new Pep508Error(reason, this.i);
  }
}

/** Evaluates a marker in an environment, as `packaging.markers.Marker.evaluate` does. */
export function evaluateMarker(marker: Marker, env: MarkerEnvironment): boolean {
  switch (marker.op) {
    case 'and':
      return evaluateMarker(marker.left, env) && evaluateMarker(marker.right, env);
    case 'or':
      return evaluateMarker(marker.left, env) || evaluateMarker(marker.right, env);
    case 'compare': {
      const isExtra = isVariable(marker.left, 'extra') || isVariable(marker.right, 'extra');
      // Extras compare by normalised name (packaging does the same since 22.0).
      const resolve = (v: MarkerValue) => {
        const value = 'literal' in v ? v.literal : env[v.variable as keyof MarkerEnvironment];
        return isExtra ? normalizeName(value) : value;
      };
      return compare(resolve(marker.left), marker.comparator, resolve(marker.right));
    }
  }
}

function isVariable(v: MarkerValue, name: string): boolean {
  return 'variable' in v && v.variable === name;
}

function compare(lhs: string, comparator: string, rhs: string): boolean {
  if (comparator === 'in') return rhs.includes(lhs);
  if (comparator === 'not in') return !rhs.includes(lhs);
  if (comparator !== '===' && valid(lhs) && validRange(`${comparator}${rhs}`)) {
    return satisfies(lhs, `${comparator}${rhs}`, { prereleases: true });
  }
  switch (comparator) {
    case '==':
    case '===':
      return lhs === rhs;
    case '!=':
      return lhs !== rhs;
    case '<':
      return lhs < rhs;
    case '<=':
      return lhs <= rhs;
    case '>':
      return lhs > rhs;
    case '>=':
      return lhs >= rhs;
    default:
      return false; // `~=` between non-versions is undefined; packaging raises, a check treats it as unmet
  }
}
