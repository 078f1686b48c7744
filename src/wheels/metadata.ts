/**
 * Parsers for a wheel's small text files: METADATA (core metadata, RFC 822 style headers),
 * WHEEL (same format) and entry_points.txt (INI). Each takes the text and the `where` to name in errors.
 */
import { UserError } from '../util/errors.js';

export interface CoreMetadata {
  name: string | null;
  version: string | null;
  requiresDist: string[];
  requiresPython?: string;
  providesExtra: string[];
}

export interface WheelFileFields {
  /** `Wheel-Version` as written, e.g. `1.0`. */
  wheelVersion: string;
  rootIsPurelib: boolean;
  /** `Tag:` lines as written. */
  tags: string[];
}

export interface EntryPoint {
  /** The script's name (`pip3.11`). */
  name: string;
  /** `pip._internal.cli.main` */
  module: string;
  /** `main`, or `Cls.method`; null when the entry point names only a module. */
  attr: string | null;
}

export interface EntryPoints {
  console_scripts: EntryPoint[];
  gui_scripts: EntryPoint[];
}

/** Header fields in order, keys lowercased; the body (after the first blank line) is ignored. */
export function parseHeaders(text: string): [string, string][] {
  const fields: [string, string][] = [];
  for (const line of text.split(/\r?\n/)) {
    if (line === '') break;
    if (/^[ \t]/.test(line) && fields.length > 0) {
      fields[fields.length - 1]![1] += '\n' + line.trim();
      continue;
    }
    const colon = line.indexOf(':');
    if (colon <= 0) continue; // not a header line; core metadata readers skip these too
    fields.push([line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim()]);
  }
  return fields;
}

export function parseCoreMetadata(text: string): CoreMetadata {
  const meta: CoreMetadata = { name: null, version: null, requiresDist: [], providesExtra: [] };
  for (const [key, value] of parseHeaders(text)) {
    if (key === 'name') meta.name = value;
    else if (key === 'version') meta.version = value;
    else if (key === 'requires-dist') meta.requiresDist.push(value);
    else if (key === 'requires-python') meta.requiresPython = value;
    else if (key === 'provides-extra') meta.providesExtra.push(value);
  }
  return meta;
}

export function parseWheelFile(text: string, where: string): WheelFileFields {
  let wheelVersion: string | null = null;
  let rootIsPurelib: boolean | null = null;
  const tags: string[] = [];
  for (const [key, value] of parseHeaders(text)) {
    if (key === 'wheel-version') wheelVersion = value;
    else if (key === 'root-is-purelib') rootIsPurelib = value.toLowerCase() === 'true';
    else if (key === 'tag') tags.push(value);
  }
  if (wheelVersion === null) throw new UserError(`${where}: no Wheel-Version field`);
  if (!/^\d+\.\d+$/.test(wheelVersion)) throw new UserError(`${where}: Wheel-Version ${wheelVersion} is not a version`);
  if (rootIsPurelib === null) throw new UserError(`${where}: no Root-Is-Purelib field`);
  return { wheelVersion, rootIsPurelib, tags };
}

/** Only the script groups; other groups (plugins) need nothing at install time. */
export function parseEntryPoints(text: string, where: string): EntryPoints {
  const result: EntryPoints = { console_scripts: [], gui_scripts: [] };
  let group: string | null = null;
  text.split(/\r?\n/).forEach((raw, index) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) return;
    const section = /^\[(.+)\]$/.exec(line);
    if (section) {
      group = section[1]!.trim();
      return;
    }
    if (group !== 'console_scripts' && group !== 'gui_scripts') return;
    const match = /^([^=\s][^=]*?)\s*=\s*([\w.]+)\s*(?::\s*([\w.]+))?\s*(?:\[[^\]]*\])?$/.exec(line);
    if (!match) throw new UserError(`${where}: line ${index + 1}: cannot read entry point "${line}"`);
    const name = match[1]!;
    // The name becomes a file in bin/: a separator would let it escape.
    if (name.includes('/') || name.includes('\\') || name === '.' || name === '..') {
      throw new UserError(`${where}: line ${index + 1}: entry point name "${name}" is not a file name`);
    }
    result[group].push({ name, module: match[2]!, attr: match[3] ?? null });
  });
  return result;
}
