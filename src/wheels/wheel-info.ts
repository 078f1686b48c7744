/**
 * What nix2oci knows about a wheel before installing it: names, tags, metadata, entry points and
 * the list of entries with their RECORD hashes. Read from the zip's central directory and the
 * few small metadata files; no file body is read here, except for the wheel's own sha256, which
 * is computed by streaming the file once (the key of the layer cache).
 */
import { eq as versionsEqual, valid as validVersion } from '@renovatebot/pep440';
import { stat } from 'node:fs/promises';
import { UserError } from '../util/errors.js';
import { defaultHashPool, type HashPool } from '../util/hash-pool.js';
import { normalizeName, parseWheelFileName, type WheelTag } from './filename.js';
import { parseCoreMetadata, parseEntryPoints, parseWheelFile, type EntryPoint } from './metadata.js';
import { parseRecord, type HashAlgorithm, type RecordRow } from './record.js';
import { ZipReader, type ZipEntry } from './zip.js';
import { byCodeUnits } from '../util/order.js';

export type { WheelTag } from './filename.js';
export type { EntryPoint } from './metadata.js';

export interface WheelEntry {
  /** Path inside the zip, `/`-separated, without a trailing `/` for directories. */
  name: string;
  /** Uncompressed size; for files it equals RECORD's size (checked). */
  size: number;
  compressedSize: number;
  isDir: boolean;
  /** The zip's Unix mode says some execute bit is set. */
  executable: boolean;
  /** Lowercase hex sha256 from RECORD; null for directories, RECORD itself, or a non-sha256 RECORD hash. */
  sha256: string | null;
  /** RECORD's hash as listed (any of sha256/384/512); null only for directories and RECORD's own files. */
  recordHash: { algorithm: HashAlgorithm; hex: string } | null;
}

export interface WheelInfo {
  /** The wheel's path as given. */
  file: string;
  /** Lowercase hex sha256 of the whole wheel file. */
  sha256: string;
  /** Size of the wheel file in bytes. */
  fileSize: number;
  /** PEP 503 normalized project name. */
  name: string;
  version: string;
  tags: WheelTag[];
  /** `Wheel-Version` from WHEEL (always 1.x: other majors are refused). */
  wheelVersion: string;
  rootIsPurelib: boolean;
  /** `{name}-{version}.dist-info`, as named in the zip. */
  distInfoDir: string;
  /** `{name}-{version}.data`, as it would be named in the zip (it may not exist). */
  dataDir: string;
  metadata: {
    raw: string;
    requiresDist: string[];
    requiresPython?: string;
    providesExtra: string[];
  };
  entryPoints: { console_scripts: EntryPoint[]; gui_scripts: EntryPoint[] };
  /** Every zip entry, sorted by name. Names and sizes only: bodies are read when installing. */
  entries: WheelEntry[];
}

/** Limits for the metadata files read into memory: generous, but a hostile wheel cannot exhaust memory. */
const METADATA_LIMIT = 16 << 20;
const RECORD_LIMIT = 256 << 20;

/** Files RECORD lists without a hash: RECORD itself and its signatures (PEP 376). */
export function isRecordFile(name: string, distInfoDir: string): boolean {
  return name === `${distInfoDir}/RECORD` || name === `${distInfoDir}/RECORD.jws` || name === `${distInfoDir}/RECORD.p7s`;
}

/**
 * Reads and checks a wheel: its file name, zip structure, WHEEL (version 1.x), METADATA, RECORD
 * (every file listed with a hash and the size the zip says) and entry_points.txt.
 * Every problem is a UserError naming the file and, where there is one, the entry.
 */
export async function readWheelInfo(file: string, hashes: HashPool = defaultHashPool()): Promise<WheelInfo> {
  const fileName = parseWheelFileName(file);
  const hashing = hashFile(file, hashes);
  // The hash stream fails on its own for a missing file; keep that rejection handled until awaited.
  hashing.catch(() => {});
  const zip = await ZipReader.open(file);
  try {
    const distInfoDir = findDistInfoDir(file, zip.entries, fileName.name);
    const byName = new Map(zip.entries.filter((e) => !e.isDir).map((e) => [e.name, e]));
    const readRequired = async (base: string, limit: number) => {
      const entry = byName.get(`${distInfoDir}/${base}`);
      if (!entry) throw new UserError(`${file}: no ${distInfoDir}/${base} in the wheel`);
      return zip.readText(entry, limit);
    };

    const wheelFields = parseWheelFile(await readRequired('WHEEL', METADATA_LIMIT), `${file}: ${distInfoDir}/WHEEL`);
    const major = wheelFields.wheelVersion.split('.')[0];
    if (major !== '1') {
      throw new UserError(`${file}: Wheel-Version ${wheelFields.wheelVersion} in ${distInfoDir}/WHEEL is not supported (only 1.x)`);
    }

    const metadataText = await readRequired('METADATA', METADATA_LIMIT);
    const metadata = parseCoreMetadata(metadataText);
    checkNameAndVersion(file, distInfoDir, metadata, fileName);

    const entryPointsEntry = byName.get(`${distInfoDir}/entry_points.txt`);
    const entryPoints = entryPointsEntry
      ? parseEntryPoints(await zip.readText(entryPointsEntry, METADATA_LIMIT), `${file}: ${distInfoDir}/entry_points.txt`)
      : { console_scripts: [], gui_scripts: [] };

    const record = parseRecord(await readRequired('RECORD', RECORD_LIMIT), `${file}: ${distInfoDir}/RECORD`);
    const entries = matchRecord(file, distInfoDir, zip.entries, record);

    const { sha256, size } = await hashing;
    return {
      file,
      sha256,
      fileSize: size,
      name: fileName.name,
      version: fileName.version,
      tags: fileName.tags,
      wheelVersion: wheelFields.wheelVersion,
      rootIsPurelib: wheelFields.rootIsPurelib,
      distInfoDir,
      dataDir: distInfoDir.replace(/\.dist-info$/, '.data'),
      metadata: {
        raw: metadataText,
        requiresDist: metadata.requiresDist,
        ...(metadata.requiresPython !== undefined ? { requiresPython: metadata.requiresPython } : {}),
        providesExtra: metadata.providesExtra,
      },
      entryPoints,
      entries,
    };
  } finally {
    await zip.close();
  }
}

/** The wheel's sha256, on the hash pool's threads: a torch wheel is hundreds of MB, hashed beside other work. */
async function hashFile(file: string, hashes: HashPool): Promise<{ sha256: string; size: number }> {
  try {
    const size = (await stat(file)).size;
    const { digest } = await hashes.sha256([{ file, start: 0, length: size }]);
    return { sha256: digest.slice('sha256:'.length), size };
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { code?: string };
    throw new UserError(`${file}: cannot read: ${e.code ?? e.message}`, { cause: err });
  }
}

/** The one top-level `*.dist-info` directory, whose name must match the file name's project. */
function findDistInfoDir(file: string, entries: ZipEntry[], name: string): string {
  const dirs = new Set<string>();
  for (const entry of entries) {
    const slash = entry.name.indexOf('/');
    const top = slash < 0 ? entry.name : entry.name.slice(0, slash);
    if (top.endsWith('.dist-info') && (entry.isDir || entry.name !== top)) dirs.add(top);
  }
  if (dirs.size === 0) throw new UserError(`${file}: no .dist-info directory in the wheel`);
  if (dirs.size > 1) throw new UserError(`${file}: more than one .dist-info directory: ${[...dirs].sort().join(', ')}`);
  const dir = [...dirs][0]!;
  const project = dir.slice(0, -'.dist-info'.length).split('-')[0]!;
  if (normalizeName(project) !== name) {
    throw new UserError(`${file}: ${dir} is for project ${project}, the file name says ${name}`);
  }
  return dir;
}

function checkNameAndVersion(
  file: string,
  distInfoDir: string,
  metadata: { name: string | null; version: string | null },
  fileName: { name: string; version: string },
): void {
  const where = `${file}: ${distInfoDir}/METADATA`;
  if (metadata.name === null) throw new UserError(`${where} has no Name field`);
  if (metadata.version === null) throw new UserError(`${where} has no Version field`);
  if (normalizeName(metadata.name) !== fileName.name) {
    throw new UserError(`${where} names project ${metadata.name}, the file name says ${fileName.name}`);
  }
  // File names escape `-` in versions as `_`; compare as PEP 440 versions when both parse.
  const fileVersion = fileName.version.replace(/_/g, '-');
  const same =
    validVersion(metadata.version) && validVersion(fileVersion)
      ? versionsEqual(metadata.version, fileVersion)
      : metadata.version === fileVersion;
  if (!same) throw new UserError(`${where} says version ${metadata.version}, the file name says ${fileName.version}`);
}

/**
 * RECORD and the zip must agree: every file is listed once with a hash and the zip's size, and
 * RECORD lists nothing the zip lacks. Hashes themselves are checked while the bodies stream.
 */
function matchRecord(file: string, distInfoDir: string, zipEntries: ZipEntry[], record: RecordRow[]): WheelEntry[] {
  const where = `${file}: ${distInfoDir}/RECORD`;
  const rows = new Map<string, RecordRow>();
  for (const row of record) {
    if (rows.has(row.path)) throw new UserError(`${where} lists ${row.path} twice`);
    rows.set(row.path, row);
  }
  const entries: WheelEntry[] = [];
  /** Every entry in one shape, made in one step (no spread: torch has 20,000). */
  const entry = (z: ZipEntry, recordHash: RecordRow['hash']): WheelEntry => ({
    name: z.name,
    size: z.size,
    compressedSize: z.compressedSize,
    isDir: z.isDir,
    executable: !z.isDir && z.unixMode !== null && (z.unixMode & 0o111) !== 0,
    sha256: recordHash?.algorithm === 'sha256' ? recordHash.hex : null,
    recordHash,
  });
  for (const zipEntry of zipEntries) {
    if (zipEntry.isDir) {
      entries.push(entry(zipEntry, null));
      continue;
    }
    const row = rows.get(zipEntry.name);
    rows.delete(zipEntry.name);
    if (isRecordFile(zipEntry.name, distInfoDir)) {
      entries.push(entry(zipEntry, null));
      continue;
    }
    if (!row) throw new UserError(`${file}: entry ${zipEntry.name} is not listed in ${distInfoDir}/RECORD`);
    if (!row.hash) throw new UserError(`${where}: ${zipEntry.name} has no hash`);
    if (row.size !== null && row.size !== zipEntry.size) {
      throw new UserError(`${where}: ${zipEntry.name} should be ${row.size} bytes, the zip holds ${zipEntry.size}`);
    }
    entries.push(entry(zipEntry, row.hash));
  }
  const missing = [...rows.keys()].filter((path) => !isRecordFile(path, distInfoDir));
  if (missing.length > 0) {
    throw new UserError(`${where} lists ${missing[0]}${missing.length > 1 ? ` (and ${missing.length - 1} more)` : ''}, not in the wheel`);
  }
  return entries.sort((a, b) => byCodeUnits(a.name, b.name));
}

