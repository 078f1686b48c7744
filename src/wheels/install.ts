/**
 * Installing a wheel into a layer, as the wheel spec (PEP 427) and pip lay it out, with no Python
 * on the build machine. The layer holds the prefix's tree (`opt/python/lib/python3.11/site-packages/…`,
 * `opt/python/bin/…`), built in one pass over the zip: each body is read by seeking, checked against
 * RECORD while it streams into the tar, and never held whole.
 *
 * Deterministic: entries are sorted by their path in the layer (not the zip's order), every directory is
 * emitted once with 0755, files 0644 or 0755, and the tar writer fixes mtimes and owners — the same wheel,
 * prefix and interpreter give the same layer in every image.
 *
 * Giant files (a ROCm torch wheel holds several libraries over 1 GB) are split off into layers of their
 * own, one file each with its parent directories (see {@link WheelLayer.pieces}): such a layer's bytes
 * depend only on that file's content, install path and mode, so it keeps its digest when the wheel around
 * it changes, and a new build of the wheel changes few bytes of the image.
 */
import { createHash } from 'node:crypto';
import { posix } from 'node:path';
import type { LayerSource, TarSink } from '../layer/types.js';
import { asUserError, type LayerOutput, type Written } from '../layer/writer.js';
import { tarFrame, tarSize, type FramedEntry, type SizedEntry } from '../tar/writer.js';
import { UserError } from '../util/errors.js';
import { whiteoutInPath } from '../tar/whiteout.js';
import { recordHash, formatRecordLine } from './record.js';
import { checkInterpreter, launcherScript, readScriptHead } from './scripts.js';
import { changedSinceRead, type ChunkObserver } from './verify.js';
import { isRecordFile, type WheelEntry, type WheelInfo} from './wheel-info.js';
import { ZipReader, type ZipEntry } from './zip.js';
import { byCodeUnits } from '../util/order.js';
import { Spares } from '../util/spares.js';
import { defaultUnzipPool, type EntryBodies, type UnzipPool } from './unzip-pool.js';
import type { EntryRequest } from './unzip-worker.js';

export interface WheelInstallOptions {
  /** Absolute install prefix in the image, e.g. `/opt/python`. */
  prefix: string;
  /** The image's Python as `major.minor`, e.g. `3.11`: names `lib/python3.11/site-packages`. */
  pythonVersion: string;
  /** Absolute path of the image's interpreter, for launchers and `#!python` scripts. */
  interpreter: string;
  /**
   * Called for each file taken from the wheel, before its bytes stream; a returned tap sees every chunk
   * in the same pass (e.g. `ElfCollector.entry`) and `end` once the file is complete and verified.
   */
  /** `zip`: where the entry lies in the wheel (for a second read without reading the zip's directory again). */
  inspect?: (file: { path: string; entry: WheelEntry; zip: ZipEntry }) => Inspector | undefined;
  /**
   * Installed files of at least this many bytes get a layer of their own (default {@link SPLIT_THRESHOLD};
   * `Infinity` keeps the whole install in one layer). Rewritten `#!python` scripts always stay in the main layer.
   */
  splitThreshold?: number;
  /** Reads, inflates and checks the wheel's entries on worker threads (default: a pool of one thread per CPU). */
  unzip?: UnzipPool;
}

/**
 * What `inspect` gives for a file: it sees the file's bytes in order, and `end` once they are through.
 * One that can say which byte it wants next (`wanted`, null: none) lets a reader of a file already
 * written skip the rest (`skipTo`).
 */
export type Inspector = ChunkObserver & { end(): void | Promise<void>; wanted?(): number | null; skipTo?(offset: number): void };

/** Installed files at least this large (uncompressed) are split off into a layer each: 256 MiB. */
export const SPLIT_THRESHOLD = 256 * 1024 * 1024;

/** One layer of a wheel's install: its main layer, or one giant file split off. */
export interface WheelLayerPiece {
  /** `main`, or the split-off file's path in the layer (`opt/python/…/torch/lib/librocblas.so`): stable per wheel. */
  id: string;
  source: LayerSource;
  /** Absolute paths in the image of the files this layer installs, sorted. */
  files: string[];
  /** For a split-off file, all that decides its layer besides the tar settings; null for the main layer. */
  split: SplitFile | null;
  /**
   * Bytes of the layer's tar with entries of this mtime, known before it is made; null when it holds a
   * script whose `#!python` line is rewritten as it streams (and RECORD, which lists the script's size).
   */
  tarSize(mtime: number): number | null;
  /**
   * Writes this layer uncompressed at `out` in one pass on an unzip thread (see UnzipPool.writeLayer),
   * then shows `inspect` the ELF files it holds, read back from `out`; null when the layer cannot be
   * framed before it is written (when `tarSize` is null).
   */
  writeTar(out: LayerOutput, mtime: number, onBytes?: (bytes: number) => void): Promise<Written> | null;
}

/** A file split off into its own layer: that layer holds its parent directories (0755) and the file. */
export interface SplitFile {
  /** The wheel's entry: zip name, size, RECORD hash. The layer's bytes are this content. */
  entry: WheelEntry;
  /** Path in the layer, relative (`opt/python/lib/python3.11/site-packages/torch/lib/librocblas.so`). */
  name: string;
  mode: number;
}

export interface WheelLayer {
  /** The whole install in one layer (what `pieces` give with nothing split off). */
  source: LayerSource;
  /** That layer uncompressed, written by an unzip thread (see WheelLayerPiece.writeTar); null when it holds a rewritten script. */
  writeTar(out: LayerOutput, mtime: number, onBytes?: (bytes: number) => void): Promise<Written> | null;
  /**
   * The install as the image gets it: the main layer first (every file not split off, launchers,
   * INSTALLER and RECORD, which lists every file as unsplit), then one layer per split-off file, by path.
   */
  pieces: WheelLayerPiece[];
  /** Absolute paths in the image. */
  sitePackages: string;
  binDir: string;
  /** Absolute paths of every file the layer installs, sorted (for `inspect` and conflict checks). */
  files: string[];
}

const DIR_MODE = 0o755;
const FILE_MODE = 0o644;
const EXEC_MODE = 0o755;
const INSTALLER_TEXT = 'nix2oci\n';

/** One file of the layer, by where its bytes come from. Every kind has every field (one shape for the JIT: thousands pass by). */
type PlannedFile =
  | { kind: 'wheel'; name: string; mode: number; entry: WheelEntry; script: boolean; content: null }
  | { kind: 'generated'; name: string; mode: number; entry: null; script: false; content: Buffer }
  | { kind: 'record'; name: string; mode: number; entry: null; script: false; content: null };
type WheelFile = Extract<PlannedFile, { kind: 'wheel' }>;

/** Where each `.data/<key>` goes, as tar names (relative, no leading `/`). */
interface Scheme {
  purelib: string;
  platlib: string;
  scripts: string;
  data: string;
  headers: string;
}

/**
 * Plans the install (every path is checked here, before any layer output starts) and returns the
 * layer's source. The source opens the wheel each time it runs.
 */
export function wheelLayerSource(info: WheelInfo, options: WheelInstallOptions): WheelLayer {
  const scheme = installScheme(info, options);
  checkInterpreter(options.interpreter);
  const plan = planInstall(info, options, scheme);
  const threshold = options.splitThreshold ?? SPLIT_THRESHOLD;
  if (!(threshold > 0)) throw new UserError(`wheel split threshold must be a positive number of bytes, got ${threshold}`);
  const splits = plan.filter((f): f is WheelFile => f.kind === 'wheel' && !f.script && f.entry.size >= threshold);
  // Without rewritten scripts, the installed RECORD is known before anything is written: made once.
  let made: Buffer | null | undefined;
  const record = (): Buffer | null => {
    if (made === undefined) made = plan.some((f) => f.kind === 'wheel' && f.script) ? null : installedRecord(info, scheme, plan, knownRows(plan), `${info.distInfoDir}/RECORD`);
    return made;
  };
  const rest = plan.filter((f) => !splits.includes(f as WheelFile));
  // The zip's directory, read once for the pieces written by unzip threads (torch's has 20,000 entries),
  // and let go once each piece has taken it.
  const zipEntries = sharedOnce(() => zipEntriesOf(info), 1 + splits.length);
  const pieces: WheelLayerPiece[] = [
    {
      id: 'main',
      files: rest.map((f) => '/' + f.name),
      split: null,
      source: (sink) => writeInstall(info, options, scheme, plan, rest, sink, record),
      tarSize: (mtime) => installSize(plan, rest, mtime, record),
      writeTar: (out, mtime, onBytes) => writeInstallTar(info, options, plan, rest, record, zipEntries, out, mtime, onBytes),
    },
    ...splits.map((file) => ({
      id: file.name,
      files: ['/' + file.name],
      split: { entry: file.entry, name: file.name, mode: file.mode },
      source: (sink: TarSink) => writeInstall(info, options, scheme, plan, [file], sink, record),
      tarSize: (mtime: number) => installSize(plan, [file], mtime, record),
      writeTar: (out: LayerOutput, mtime: number, onBytes?: (bytes: number) => void) => writeInstallTar(info, options, plan, [file], record, zipEntries, out, mtime, onBytes),
    })),
  ];
  return {
    sitePackages: '/' + scheme.purelib,
    binDir: '/' + scheme.scripts,
    files: plan.map((f) => '/' + f.name),
    source: (sink) => writeInstall(info, options, scheme, plan, plan, sink, record),
    writeTar: (out, mtime, onBytes) => writeInstallTar(info, options, plan, plan, record, zipEntries, out, mtime, onBytes),
    pieces,
  };
}

function installScheme(info: WheelInfo, options: WheelInstallOptions): Scheme {
  const { prefix, pythonVersion } = options;
  if (!prefix.startsWith('/') || prefix !== posix.normalize(prefix) || (prefix.endsWith('/') && prefix !== '/') || prefix.includes('\0')) {
    throw new UserError(`wheel install prefix "${prefix}" must be a normalised absolute path such as /opt/python`);
  }
  if (!/^\d+\.\d+$/.test(pythonVersion)) throw new UserError(`Python version "${pythonVersion}" is not of the form 3.11`);
  const root = prefix.slice(1);
  const under = (...parts: string[]) => [root, ...parts].filter((p) => p !== '').join('/');
  const sitePackages = under('lib', `python${pythonVersion}`, 'site-packages');
  return {
    purelib: sitePackages,
    platlib: sitePackages,
    scripts: under('bin'),
    data: root,
    headers: under('include', `python${pythonVersion}`, info.name),
  };
}

function planInstall(info: WheelInfo, options: WheelInstallOptions, scheme: Scheme): PlannedFile[] {
  // Each file with where it comes from (for messages); kept apart so every file keeps one shape.
  const files = new Map<string, { file: PlannedFile; from: string }>();
  const add = (file: PlannedFile, from: string) => {
    const existing = files.get(file.name);
    if (existing) throw new UserError(`${info.file}: ${existing.from} and ${from} both install /${file.name}`);
    const whiteout = whiteoutInPath(file.name);
    if (whiteout) throw new UserError(`${info.file}: ${from} would install /${file.name}, whose ${JSON.stringify(whiteout.component)} ${whiteout.problem}`);
    files.set(file.name, { file, from });
  };
  const rootScheme = info.rootIsPurelib ? scheme.purelib : scheme.platlib;
  const dataPrefix = info.dataDir + '/';

  for (const entry of info.entries) {
    if (entry.isDir) continue;
    // RECORD and its signatures are replaced by the installed RECORD; INSTALLER is ours to write.
    if (isRecordFile(entry.name, info.distInfoDir) || entry.name === `${info.distInfoDir}/INSTALLER`) continue;
    if (!entry.name.startsWith(dataPrefix)) {
      add({ kind: 'wheel', name: `${rootScheme}/${entry.name}`, mode: modeOf(entry), entry, script: false, content: null }, `entry ${entry.name}`);
      continue;
    }
    const rest = entry.name.slice(dataPrefix.length);
    const slash = rest.indexOf('/');
    if (slash < 0) {
      throw new UserError(`${info.file}: entry ${entry.name} lies directly in ${info.dataDir}; its files belong under purelib, platlib, headers, scripts or data`);
    }
    const key = rest.slice(0, slash);
    if (!isSchemeKey(key)) {
      throw new UserError(`${info.file}: entry ${entry.name}: unknown ${info.dataDir} directory "${key}" (expected purelib, platlib, headers, scripts or data)`);
    }
    const target = joinName(scheme[key], rest.slice(slash + 1));
    const script = key === 'scripts';
    add({ kind: 'wheel', name: target, mode: script ? EXEC_MODE : modeOf(entry), entry, script, content: null }, `entry ${entry.name}`);
  }

  const where = `${info.file}: ${info.distInfoDir}/entry_points.txt`;
  for (const point of [...info.entryPoints.console_scripts, ...info.entryPoints.gui_scripts]) {
    const content = Buffer.from(launcherScript(point, options.interpreter, where));
    add({ kind: 'generated', name: `${scheme.scripts}/${point.name}`, mode: EXEC_MODE, entry: null, script: false, content }, `entry point ${point.name}`);
  }
  const distInfo = `${rootScheme}/${info.distInfoDir}`;
  add({ kind: 'generated', name: `${distInfo}/INSTALLER`, mode: FILE_MODE, entry: null, script: false, content: Buffer.from(INSTALLER_TEXT) }, 'INSTALLER');
  add({ kind: 'record', name: `${distInfo}/RECORD`, mode: FILE_MODE, entry: null, script: false, content: null }, 'RECORD');

  return [...files.values()].map(({ file }) => file).sort((a, b) => byCodeUnits(a.name, b.name));
}

function isSchemeKey(key: string): key is keyof Scheme {
  return key === 'purelib' || key === 'platlib' || key === 'headers' || key === 'scripts' || key === 'data';
}

function joinName(base: string, rest: string): string {
  return base === '' ? rest : `${base}/${rest}`;
}

/** 0755 when the zip says some execute bit is set, as pip does; nothing else of the zip's mode is kept. */
function modeOf(entry: WheelEntry): number {
  return entry.executable ? EXEC_MODE : FILE_MODE;
}

/** Every ancestor directory of the planned files, each once. */
function directoriesOf(plan: PlannedFile[]): string[] {
  const dirs = new Set<string>();
  for (const file of plan) {
    let slash = file.name.lastIndexOf('/');
    while (slash > 0) {
      const dir = file.name.slice(0, slash);
      if (dirs.has(dir)) break;
      dirs.add(dir);
      slash = dir.lastIndexOf('/');
    }
  }
  return [...dirs];
}

/** What the installed RECORD says about one file, filled in as files are written. */
interface InstalledRow {
  hash: string;
  size: number;
}

/**
 * Writes `members` (some or all of `plan`, sorted) and their parent directories. RECORD, when a member,
 * is made from the whole plan: the wheel's hashes for files installed unchanged, whichever layer has them.
 */
async function writeInstall(
  info: WheelInfo,
  options: WheelInstallOptions,
  scheme: Scheme,
  plan: PlannedFile[],
  members: PlannedFile[],
  sink: TarSink,
  /** The installed RECORD, when it is known before the layer is written. */
  record: () => Buffer | null,
): Promise<void> {
  const zipEntries = await zipEntriesOf(info);
  // Rows are needed only to make RECORD here, with the rewritten scripts' rows added as they are written.
  const rows = record() ? new Map<string, InstalledRow>() : knownRows(plan);
  const items = tarOrder(members);
  // The wheel's files are read, inflated and checked on the unzip pool, ahead of the tar, in its order.
  const requests = items.flatMap((item): EntryRequest[] => (typeof item !== 'string' && item.kind === 'wheel' ? [entryRequest(zipEntryFor(info, zipEntries, item.entry), item.entry)] : []));
  const bodies = (options.unzip ?? defaultUnzipPool()).bodies(info.file, requests);
  try {
    for (const item of items) {
      if (typeof item === 'string') {
        await sink.add({ type: 'directory', name: item, mode: DIR_MODE });
      } else if (item.kind === 'generated') {
        await sink.add({ type: 'file', name: item.name, mode: item.mode, size: item.content.length, body: item.content });
      } else if (item.kind === 'record') {
        const content = record() ?? installedRecord(info, scheme, plan, rows, item.name);
        await sink.add({ type: 'file', name: item.name, mode: FILE_MODE, size: content.length, body: content });
      } else {
        const row = await writeWheelFile(info, options, bodies, item, sink, zipEntryFor(info, zipEntries, item.entry));
        if (row) rows.set(item.name, row);
      }
    }
  } finally {
    bodies.close();
  }
}

/** Directories (a name) and files, in tar order. */
function tarOrder(members: PlannedFile[]): (string | PlannedFile)[] {
  const items: (string | PlannedFile)[] = [...directoriesOf(members), ...members];
  return items.sort((a, b) => byCodeUnits(typeof a === 'string' ? a : a.name, typeof b === 'string' ? b : b.name));
}

/** The installed RECORD's rows known before anything is written: all but those of rewritten scripts. */
function knownRows(plan: PlannedFile[]): Map<string, InstalledRow> {
  const rows = new Map<string, InstalledRow>();
  for (const file of plan) {
    if (file.kind === 'wheel' && !file.script && file.entry.recordHash) {
      rows.set(file.name, { hash: recordHash(file.entry.recordHash.algorithm, Buffer.from(file.entry.recordHash.hex, 'hex')), size: file.entry.size });
    } else if (file.kind === 'generated') {
      rows.set(file.name, { hash: recordHash('sha256', createHash('sha256').update(file.content).digest()), size: file.content.length });
    }
  }
  return rows;
}

/** The tar size of writeInstall's layer of `members`, or null while a script's rewritten size is unknown. */
function installSize(plan: PlannedFile[], members: PlannedFile[], mtime: number, record: () => Buffer | null): number | null {
  const files: SizedEntry[] = [];
  for (const file of members) {
    if (file.kind === 'wheel') {
      if (file.script) return null;
      files.push({ type: 'file', name: file.name, mode: file.mode, size: file.entry.size });
    } else if (file.kind === 'generated') {
      files.push({ type: 'file', name: file.name, mode: file.mode, size: file.content.length });
    } else {
      const content = record();
      if (!content) return null;
      files.push({ type: 'file', name: file.name, mode: FILE_MODE, size: content.length });
    }
  }
  const directories = directoriesOf(members).map((name): SizedEntry => ({ type: 'directory', name, mode: DIR_MODE }));
  return tarSize([...directories, ...files], mtime);
}

/**
 * writeInstall's layer of `members`, uncompressed, written by an unzip thread: the tar is framed here
 * (headers, generated files, padding) and the thread puts each wheel file's body into its gap, checked
 * against RECORD, hashing the whole tar as it writes. Null when a script is rewritten (its size is known
 * only as it streams). The ELF files are then read back from `out`, only as far as `inspect` wants.
 */
function writeInstallTar(
  info: WheelInfo,
  options: WheelInstallOptions,
  plan: PlannedFile[],
  members: PlannedFile[],
  record: () => Buffer | null,
  zipEntries: () => Promise<Map<string, ZipEntry>>,
  out: LayerOutput,
  mtime: number,
  onBytes?: (bytes: number) => void,
): Promise<Written> | null {
  if (members.some((f) => f.kind === 'wheel' && f.script)) return null;
  const hasRecord = members.some((f) => f.kind === 'record');
  const recordContent = hasRecord ? record() : null;
  if (hasRecord && !recordContent) return null;
  return (async () => {
    const entries = await zipEntries();
    const items = tarOrder(members);
    const framed: FramedEntry[] = [];
    const requests: EntryRequest[] = [];
    const bodies: WheelFile[] = [];
    for (const item of items) {
      if (typeof item === 'string') framed.push({ type: 'directory', name: item, mode: DIR_MODE });
      else if (item.kind === 'generated') framed.push({ type: 'file', name: item.name, mode: item.mode, size: item.content.length, body: item.content });
      else if (item.kind === 'record') framed.push({ type: 'file', name: item.name, mode: FILE_MODE, size: recordContent!.length, body: recordContent });
      else {
        framed.push({ type: 'file', name: item.name, mode: item.mode, size: item.entry.size, body: null });
        requests.push(entryRequest(zipEntryFor(info, entries, item.entry), item.entry));
        bodies.push(item);
      }
    }
    const frame = tarFrame(framed, mtime);
    // The frame's memory moves to the thread: what is needed of it is taken first.
    const frameSize = frame.bytes.length;
    const unzip = options.unzip ?? defaultUnzipPool();
    const { hex, elf } = await unzip
      .writeLayer(info.file, { fd: out.handle.fd, at: out.at }, frame.bytes, frame.gaps.map((g) => g.at), requests, { onBytes })
      .catch((err: unknown) => {
        throw asUserError(err, out.path);
      });
    const starts: number[] = [];
    let streamed = 0;
    for (const gap of frame.gaps) {
      starts.push(out.at + gap.at + streamed);
      streamed += gap.size;
    }
    // One buffer for the layer's reads: what an inspector keeps, it copies.
    const buffer = elf.length > 0 && options.inspect ? READ_BACK.take() : null;
    try {
      for (const i of elf) {
        const file = bodies[i]!;
        const inspector = options.inspect?.({ path: '/' + file.name, entry: file.entry, zip: zipEntryFor(info, entries, file.entry) });
        if (inspector) await inspectWritten(out, starts[i]!, file.entry.size, inspector, buffer!);
      }
    } finally {
      if (buffer) READ_BACK.give(buffer);
    }
    // The other files would tell the ELF collector nothing (their first bytes say so): they are not read back.
    const size = frameSize + streamed;
    const digest = `sha256:${hex}`;
    return { digest, size, diffId: digest, tarSize: size };
  })();
}

/** `make`'s result, made once for the first `takers` calls (a later call makes it again): kept no longer than they need it. */
function sharedOnce<T>(make: () => Promise<T>, takers: number): () => Promise<T> {
  let made: Promise<T> | null = null;
  let taken = 0;
  return () => {
    made ??= make();
    const result = made;
    if (++taken >= takers) {
      made = null;
      taken = 0;
    }
    return result;
  };
}

/** The zip's entries by name, checked against what was read of the wheel before. */
async function zipEntriesOf(info: WheelInfo): Promise<Map<string, ZipEntry>> {
  const zip = await ZipReader.open(info.file);
  try {
    if (zip.entries.length !== info.entries.length) throw changedSinceRead(info, '(entry count)');
    return new Map(zip.entries.map((e) => [e.name, e]));
  } finally {
    await zip.close();
  }
}

function zipEntryFor(info: WheelInfo, entries: Map<string, ZipEntry>, entry: WheelEntry): ZipEntry {
  const zipEntry = entries.get(entry.name);
  if (!zipEntry || zipEntry.size !== entry.size || zipEntry.compressedSize !== entry.compressedSize || zipEntry.isDir) throw changedSinceRead(info, entry.name);
  return zipEntry;
}

/** Buffers of bytes read back for an inspector, a MiB at a time: kept for the next layers (two write at once with --jobs 2). */
const READ_BACK = new Spares(1 << 20, 2);

/** Shows `inspector` a file's bytes read back from where its layer was written, skipping what it does not want. */
async function inspectWritten(out: LayerOutput, start: number, size: number, inspector: Inspector, buffer: Buffer): Promise<void> {
  let at = 0;
  while (at < size) {
    const wanted = inspector.wanted ? inspector.wanted() : at;
    if (wanted === null || wanted >= size) break;
    if (wanted > at) {
      inspector.skipTo!(wanted);
      at = wanted;
    }
    const length = Math.min(buffer.length, size - at);
    let got = 0;
    while (got < length) {
      const { bytesRead } = await out.handle.read(buffer, got, length - got, start + at + got);
      if (bytesRead === 0) throw new Error(`${out.path}: ends before byte ${start + at + got}, where a layer was just written`);
      got += bytesRead;
    }
    inspector.push(buffer.subarray(0, length));
    at += length;
  }
  await inspector.end();
}

/** What an unzip worker needs to read, inflate and check one entry. */
function entryRequest(zipEntry: ZipEntry, entry: WheelEntry): EntryRequest {
  return {
    name: entry.name,
    offset: zipEntry.offset,
    // Small and flat (the name's bytes as a string): a message copies only what the worker needs.
    central: zipEntry.central,
    hash: entry.recordHash,
  };
}

/** Streams one file from the zip into the layer; returns its RECORD row when the installed bytes differ from the wheel's. */
async function writeWheelFile(info: WheelInfo, options: WheelInstallOptions, bodies: EntryBodies, file: WheelFile, sink: TarSink, zip: ZipEntry): Promise<InstalledRow | null> {
  const inspector = options.inspect?.({ path: '/' + file.name, entry: file.entry, zip });
  const whole = file.script ? null : bodies.whole();
  if (whole) {
    const { body, release } = await whole;
    try {
      inspector?.push(body);
      await sink.add({ type: 'file', name: file.name, mode: file.mode, size: file.entry.size, body });
    } finally {
      release();
    }
    await inspector?.end();
    return null;
  }
  const body = observed(bodies.next(), inspector);
  if (!file.script) {
    await sink.add({ type: 'file', name: file.name, mode: file.mode, size: file.entry.size, body });
    await inspector?.end();
    return null;
  }
  const installed = createHash('sha256');
  // A script's first chunks are held while its first line is read: copies, not the pool's buffers.
  const chunks = copied(body);
  try {
    const { head, consumed } = await readScriptHead(chunks, options.interpreter, `${info.file}: entry ${file.entry.name}`);
    const size = file.entry.size - consumed + head.length;
    await sink.add({ type: 'file', name: file.name, mode: file.mode, size, body: hashedBody(head, chunks, installed) });
    await inspector?.end();
    return { hash: recordHash('sha256', installed.digest()), size };
  } finally {
    await chunks.return(undefined);
  }
}

/** The body's chunks, each shown to the observer as it passes. */
async function* observed(body: AsyncGenerator<Buffer>, observer: ChunkObserver | undefined): AsyncGenerator<Buffer> {
  if (!observer) return yield* body;
  for await (const chunk of body) {
    observer.push(chunk);
    yield chunk;
  }
}

async function* copied(body: AsyncGenerator<Buffer>): AsyncGenerator<Buffer> {
  for await (const chunk of body) yield Buffer.from(chunk);
}

async function* hashedBody(head: Buffer, rest: AsyncIterator<Buffer>, hash: ReturnType<typeof createHash>): AsyncGenerator<Buffer> {
  hash.update(head);
  if (head.length > 0) yield head;
  for (;;) {
    const next = await rest.next();
    if (next.done) return;
    hash.update(next.value);
    yield next.value;
  }
}

/**
 * The installed RECORD: every installed file relative to site-packages (as pip writes `../../../bin/x`),
 * with the wheel's hash for files installed unchanged and a fresh sha256 for rewritten and generated
 * ones; RECORD itself without a hash. Rows sorted by path.
 */
function installedRecord(info: WheelInfo, scheme: Scheme, plan: PlannedFile[], rows: Map<string, InstalledRow>, recordName: string): Buffer {
  const base = info.rootIsPurelib ? scheme.purelib : scheme.platlib;
  const lines: [string, string][] = [];
  const under = base === '' ? '' : base + '/';
  for (const file of plan) {
    // Most files lie under site-packages: their relative name is a slice.
    const relative = under !== '' && file.name.startsWith(under) ? file.name.slice(under.length) : relativeName(base, file.name);
    if (file.kind === 'record') {
      lines.push([relative, formatRecordLine(relative, '', null)]);
      continue;
    }
    // Rewritten scripts are hashed as they are written; they lie in bin/, which sorts before lib/…/RECORD.
    const row = rows.get(file.name);
    if (!row) throw new Error(`no RECORD row for ${file.name} while writing ${recordName}`);
    lines.push([relative, formatRecordLine(relative, row.hash, row.size)]);
  }
  lines.sort((a, b) => byCodeUnits(a[0], b[0]));
  return Buffer.from(lines.map(([, line]) => line).join(''));
}

/** `to` relative to the directory `from`, both normalised relative names (posix.relative without resolving against the cwd). */
export function relativeName(from: string, to: string): string {
  const a = from === '' ? [] : from.split('/');
  const b = to.split('/');
  let common = 0;
  while (common < a.length && common < b.length - 1 && a[common] === b[common]) common++;
  return [...Array<string>(a.length - common).fill('..'), ...b.slice(common)].join('/');
}
