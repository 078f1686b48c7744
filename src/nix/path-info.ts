/**
 * The JSON of `nix path-info --json --recursive`, used to check an export against what Nix recorded.
 * Nix ≤ 2.18 prints an array of objects with a `path`; later versions an object keyed by path
 * (null for an invalid path). Hashes are SRI (`sha256-…`) or `sha256:` + nix-base32; both are accepted.
 */
import { readFile } from 'node:fs/promises';
import { UserError } from '../util/errors.js';
import type { StorePathInfo } from './types.js';
import { sha256ToHex } from './nar-hash.js';
import { storePathProblem } from './store-path.js';
import { quote } from '../util/quote.js';

export interface PathInfoEntry {
  /** As written in the file, for messages. */
  narHashText: string;
  /** sha256, lowercase hex. */
  narHash: string;
  narSize: number;
  /** Full store paths, sorted; undefined when the file does not list them. */
  references?: string[];
}

/** Reads and checks a path-info file. Entries are small (no file contents), so the JSON is parsed whole. */
export async function readPathInfo(file: string): Promise<Map<string, PathInfoEntry>> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new UserError(`${file}: cannot read path-info: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new UserError(`${file}: not valid JSON (expected the output of nix path-info --json --recursive): ${(err as Error).message}`);
  }

  const entries = new Map<string, PathInfoEntry>();
  const add = (path: unknown, value: unknown, where: string): void => {
    if (typeof path !== 'string' || storePathProblem(path) !== null) {
      throw new UserError(`${file}: ${where}: ${quote(String(path))} is not a valid store path`);
    }
    if (value === null || (isObject(value) && value.valid === false)) return; // Nix lists paths it does not have
    if (!isObject(value)) throw new UserError(`${file}: ${path}: expected an object`);
    const narHash = typeof value.narHash === 'string' ? sha256ToHex(value.narHash) : null;
    if (narHash === null) throw new UserError(`${file}: ${path}: narHash ${quote(String(value.narHash))} is not a sha256 hash`);
    const narSize = value.narSize;
    if (typeof narSize !== 'number' || !Number.isSafeInteger(narSize) || narSize < 0) {
      throw new UserError(`${file}: ${path}: narSize ${quote(String(narSize))} is not a size`);
    }
    let references: string[] | undefined;
    if (value.references !== undefined) {
      if (!Array.isArray(value.references) || !value.references.every((ref) => typeof ref === 'string')) {
        throw new UserError(`${file}: ${path}: references is not a list of store paths`);
      }
      // Newer Nix may print references by base name; normalise to full paths.
      references = [...new Set(value.references.map((ref: string) => (ref.startsWith('/') ? ref : `/nix/store/${ref}`)))].sort();
    }
    if (entries.has(path)) throw new UserError(`${file}: ${path} is listed twice`);
    entries.set(path, { narHashText: value.narHash as string, narHash, narSize, references });
  };

  if (Array.isArray(json)) {
    json.forEach((item, i) => add(isObject(item) ? item.path : undefined, item, `entry #${i + 1}`));
  } else if (isObject(json)) {
    for (const [path, value] of Object.entries(json)) add(path, value, 'key');
  } else {
    throw new UserError(`${file}: expected a JSON array or object (the output of nix path-info --json --recursive)`);
  }
  return entries;
}

/** Checks each indexed path against the path-info entries: present, same NAR hash, size and references. */
export function checkAgainstPathInfo(
  infos: Iterable<StorePathInfo>,
  entries: Map<string, PathInfoEntry>,
  pathInfoFile: string,
  labelOf: (info: StorePathInfo) => string,
): void {
  for (const info of infos) {
    const entry = entries.get(info.path);
    if (!entry) throw new UserError(`${pathInfoFile}: no entry for ${info.path} (read from ${labelOf(info)})`);
    if (entry.narHash !== info.narHash) {
      throw new UserError(
        `${info.path}: NAR hash mismatch: ${labelOf(info)} has ${sriOf(info.narHash)}, ${pathInfoFile} says ${entry.narHashText}`,
      );
    }
    if (entry.narSize !== info.narSize) {
      throw new UserError(
        `${info.path}: NAR size mismatch: ${labelOf(info)} has ${info.narSize} bytes, ${pathInfoFile} says ${entry.narSize}`,
      );
    }
    if (entry.references && entry.references.join('\n') !== info.references.join('\n')) {
      const extra = info.references.filter((r) => !entry.references!.includes(r));
      const missing = entry.references.filter((r) => !info.references.includes(r));
      throw new UserError(
        `${info.path}: references differ between ${labelOf(info)} and ${pathInfoFile}` +
          `${extra.length ? `; only in the export: ${extra.join(' ')}` : ''}` +
          `${missing.length ? `; only in path-info: ${missing.join(' ')}` : ''}`,
      );
    }
  }
}

/** A hex sha256 as Nix ≥ 2.4 prints it. */
export function sriOf(hexHash: string): string {
  return `sha256-${Buffer.from(hexHash, 'hex').toString('base64')}`;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
