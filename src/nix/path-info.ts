/**
 * The JSON of `nix path-info --json --recursive`, used to check an export against what Nix recorded.
 * Nix ≤ 2.18 prints an array of objects with a `path`; later versions an object keyed by path
 * (null for an invalid path). Hashes are SRI (`sha256-…`) or `sha256:` + nix-base32; both are accepted.
 */
import { UserError } from '../util/errors.js';
import type { StorePathInfo } from './types.js';
import { sha256ToHex } from './nar-hash.js';
import { storePathProblem } from './store-path.js';
import { readInputFile } from '../util/input-file.js';
import { describeJsonError } from '../util/json-error.js';

/**
 * A path-info file lists a few hundred bytes per path: 64 MiB is tens of thousands of paths. Anything
 * bigger (or endless: `--path-info /dev/zero`) is not one, and is refused before it fills memory.
 */
export const MAX_PATH_INFO_BYTES = 64 << 20;

export interface PathInfoEntry {
  /** As written in the file, for messages. */
  narHashText: string;
  /** sha256, lowercase hex. */
  narHash: string;
  narSize: number;
  /** Full store paths, sorted; undefined when the file does not list them. */
  references?: string[];
}

/**
 * Reads and checks a path-info file. Entries are small (no file contents), so the JSON is parsed whole.
 * The file may not be what it claims (a wrong path, a secret file): errors never quote its content,
 * only what has been checked to be a store path.
 */
export async function readPathInfo(file: string): Promise<Map<string, PathInfoEntry>> {
  const text = (await readInputFile(file, 'path-info', MAX_PATH_INFO_BYTES)).toString('utf8');
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new UserError(
      `${file}: not valid JSON (expected the output of nix path-info --json --recursive): ${describeJsonError(text, { quote: false })}`,
    );
  }

  const entries = new Map<string, PathInfoEntry>();
  const add = (path: unknown, value: unknown, where: string): void => {
    if (typeof path !== 'string') throw new UserError(`${file}: ${where}: no store path (expected a "path" string)`);
    const problem = storePathProblem(path);
    if (problem !== null) throw new UserError(`${file}: ${where}: not a valid store path: ${problem}`);
    if (value === null || (isObject(value) && value.valid === false)) return; // Nix lists paths it does not have
    if (!isObject(value)) throw new UserError(`${file}: ${path}: expected an object`);
    const narHash = typeof value.narHash === 'string' ? sha256ToHex(value.narHash) : null;
    if (narHash === null) throw new UserError(`${file}: ${path}: narHash is not a sha256 hash (sha256-<base64> or sha256:<nix-base32>)`);
    const narSize = value.narSize;
    if (typeof narSize !== 'number' || !Number.isSafeInteger(narSize) || narSize < 0) {
      throw new UserError(`${file}: ${path}: narSize is not a size (a whole number of bytes)`);
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
    Object.entries(json).forEach(([path, value], i) => add(path, value, `key #${i + 1}`));
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
