/**
 * Loading a closure: index every export file, merge them, and check that the result is a closure
 * (every reference present) that agrees with `nix path-info` when a path-info file is given.
 */
import { createReadStream, mkdtempSync, rmSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { readRemembered, type InputMemo } from '../util/file-identity.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import type { Closure, NarNode, StorePathInfo } from './types.js';
import { UserError } from '../util/errors.js';
import { settleInOrder } from '../util/settle.js';
import { defaultHashPool, type HashPool } from '../util/hash-pool.js';
import { describeOsError, environmentErrorMessage } from '../util/os-errors.js';
import { indexExport, spoolToFile, type NarListing } from './export.js';
import { checkAgainstPathInfo, readPathInfo, sriOf } from './path-info.js';

export { storePathName, storePathProblem, isStorePath } from './store-path.js';

export interface LoadClosureOptions {
  /** JSON of `nix path-info --json --recursive`: each path's NAR hash, size and references are checked against it. */
  pathInfoFile?: string;
  /**
   * Where stdin ('-') and pipes are spooled; the caller removes it.
   * Without it, a temporary directory removed at exit is used.
   */
  tmpDir?: string;
  /** Bytes a spooled stream may take (default: see spoolLimit). */
  spoolLimit?: number;
  /** The stream '-' stands for; defaults to process.stdin. */
  stdin?: Readable;
  /** Progress of indexing, per file. */
  onProgress?: (file: string, bytesRead: number, totalBytes: number) => void;
  /** Where indexes of export files are remembered between runs (the layer cache); none by default. */
  memo?: IndexMemo;
  /** Told when a file's index came from the memo rather than from reading the file. */
  onRecalled?: (file: string) => void;
  /**
   * Hashes the NARs (default: a pool of one thread per CPU). Null skips hashing when nothing needs the
   * hashes: then no path-info file, no memo and only one export may be given (each of those compares or
   * keys by NAR hash).
   */
  hashes?: HashPool | null;
  /** Nodes to note from each NAR as it is indexed (see indexExport); a file whose index the memo recalls gives none. */
  listing?: NarListing;
  /** Called when a file's NARs are all parsed, its hashes perhaps still being computed (see indexExport); not for a file the memo recalls. */
  onParsed?: (file: string) => void;
}

/** An export file's index, remembered by the file's identity (see fileIdentity): its NARs are not hashed again. */
export type IndexMemo = InputMemo<RememberedPath[]>;

/**
 * A path's index entry without the file name (the file may be reached by another name next time), and
 * the nodes the caller's `listing` kept of it, so a recalled index gives them too.
 */
export type RememberedPath = Omit<StorePathInfo, 'source'> & { offset: number; listing?: NarNode[] };

/** The name a file has in messages: `stdin` for '-', else the path as given. */
function labelFor(file: string): string {
  return file === '-' ? 'stdin' : file;
}

/**
 * Indexes each export file ('-' = stdin; stdin and pipes are copied to a temporary file first), merges them
 * and checks the closure.
 * A path in several files must have the same NAR (hash) and references in each; the first file's copy is used.
 */
export async function loadClosure(files: string[], opts: LoadClosureOptions = {}): Promise<Closure> {
  if (files.length === 0) throw new UserError('no closure files given: pass one or more nix-store --export files (or - for stdin)');
  if (files.filter((f) => f === '-').length > 1) throw new UserError("stdin ('-') can be given only once");
  if (opts.hashes === null && (opts.pathInfoFile !== undefined || opts.memo || files.length > 1)) throw new Error('loadClosure: NAR hashes are needed here');

  // Read first, so a bad path-info file fails before gigabytes are indexed.
  const pathInfo = opts.pathInfoFile === undefined ? null : await readPathInfo(opts.pathInfoFile);

  const labels = new Map<string, string>(); // indexed file → label
  // Files are parsed one after the other, but the next file's parsing does not wait for the last one's
  // NARs to be hashed: parsing is this thread's work, hashing the pool's, and each would idle the other.
  const indexing: Promise<StorePathInfo[]>[] = [];
  try {
    for (const given of files) {
      const label = labelFor(given);
      const file = given === '-' ? await spoolStdin(opts) : await seekable(given, opts);
      labels.set(file, label);
      const onProgress = opts.onProgress && ((read: number, total: number) => opts.onProgress!(label, read, total));
      // Only a file read in place can be remembered: stdin and pipes are spooled to a new file each time.
      const hashes = opts.hashes === undefined ? defaultHashPool() : opts.hashes;
      let parsed!: () => void;
      const parsing = new Promise<void>((resolve) => (parsed = resolve));
      const onParsed = () => {
        parsed();
        opts.onParsed?.(label);
      };
      const infos =
        file !== given
          ? indexExport(file, { label, onProgress, hashes, listing: opts.listing, onParsed })
          : indexRemembered(file, { label, hashes, memo: opts.memo, onProgress, onRecalled: opts.onRecalled, listing: opts.listing, onParsed });
      indexing.push(infos);
      await Promise.race([parsing, infos]);
    }
  } catch (err) {
    // The files before the failed one may still be hashing; their outcome no longer matters.
    for (const pending of indexing) pending.catch(() => {});
    throw err;
  }
  const merged = new Map<string, StorePathInfo>();
  for (const infos of await settleInOrder(indexing)) {
    for (const info of infos) {
      const seen = merged.get(info.path);
      if (!seen) {
        merged.set(info.path, info);
        continue;
      }
      const where = (i: StorePathInfo): string => `${labels.get(i.source.file)} (byte ${i.source.offset})`;
      if (seen.narHash !== info.narHash) {
        throw new UserError(
          `${info.path} has different contents in ${where(seen)} and ${where(info)}: NAR hash ${sriOf(seen.narHash)} vs ${sriOf(info.narHash)}`,
        );
      }
      if (seen.references.join('\n') !== info.references.join('\n')) {
        throw new UserError(`${info.path} has different references in ${where(seen)} and ${where(info)}`);
      }
    }
  }

  if (merged.size === 0) {
    throw new UserError(`${files.map(labelFor).join(', ')}: no store paths in the export (was nix-store --export given none?)`);
  }
  const sorted = [...merged.keys()].sort();
  const labelOf = (info: StorePathInfo): string => labels.get(info.source.file) ?? info.source.file;
  const referenced = new Set<string>();
  for (const path of sorted) {
    const info = merged.get(path)!;
    for (const ref of info.references) {
      if (ref === path) continue;
      if (!merged.has(ref)) {
        throw new UserError(
          `closure is incomplete: ${path} (from ${labelOf(info)}) refers to ${ref}, which is in none of ${files.map(labelFor).join(', ')}`,
        );
      }
      referenced.add(ref);
    }
  }

  if (pathInfo !== null) {
    checkAgainstPathInfo(
      sorted.map((p) => merged.get(p)!),
      pathInfo,
      opts.pathInfoFile!,
      labelOf,
    );
  }

  return {
    paths: new Map(sorted.map((p) => [p, merged.get(p)!])),
    roots: sorted.filter((p) => !referenced.has(p)),
  };
}

/**
 * The file itself when it is a regular file; a pipe (`<(nix-store --export …)`, /dev/stdin) cannot be read
 * again by offset, so it is spooled like stdin.
 */
async function seekable(file: string, opts: LoadClosureOptions): Promise<string> {
  let st;
  try {
    st = await stat(file);
  } catch {
    return file; // indexExport reports why it cannot be opened
  }
  if (st.isFile()) return file;
  if (st.isDirectory()) throw new UserError(`${file} is a directory, not a nix-store --export file`);
  return spool(createReadStream(file), file, opts);
}

let exitTmpDir: string | null = null;

async function spoolStdin(opts: LoadClosureOptions): Promise<string> {
  const stdin = opts.stdin ?? process.stdin;
  if ((stdin as { isTTY?: boolean }).isTTY) {
    throw new UserError("refusing to read an export from a terminal: pipe one into '-', e.g. nix-store --export $(nix-store -qR ./result) | nix2oci …");
  }
  return spool(stdin, 'stdin', opts);
}

async function spool(stream: Readable, label: string, opts: LoadClosureOptions): Promise<string> {
  let dir = opts.tmpDir;
  if (dir === undefined) {
    if (exitTmpDir === null) {
      let made: string;
      try {
        made = mkdtempSync(join(tmpdir(), 'nix2oci-stdin-'));
      } catch (err) {
        stream.destroy();
        throw new UserError(`${label}: cannot spool the export: ${environmentErrorMessage(err) ?? describeOsError(err)}`, { cause: err });
      }
      exitTmpDir = made;
      process.once('exit', () => rmSync(made, { recursive: true, force: true }));
    }
    dir = exitTmpDir;
  }
  return spoolToFile(stream, dir, label, opts.spoolLimit);
}

/** Indexes a regular file, or takes its index from the memo when the file is the one indexed before. */
async function indexRemembered(
  file: string,
  o: {
    label: string;
    hashes: HashPool | null;
    memo: IndexMemo | undefined;
    onProgress?: (read: number, total: number) => void;
    onRecalled?: (file: string) => void;
    listing?: NarListing;
    onParsed?: () => void;
  },
): Promise<StorePathInfo[]> {
  const { label, onProgress, onRecalled, listing } = o;
  let recalled = false;
  const paths = await readRemembered(
    file,
    o.memo,
    async () => {
      const listed = new Map<string, NarNode[]>();
      const noting = listing && {
        keep: listing.keep,
        found: (path: string, nodes: NarNode[]) => {
          listed.set(path, nodes);
          listing.found(path, nodes);
        },
      };
      const infos = await indexExport(file, { label, onProgress, hashes: o.hashes, listing: noting, onParsed: o.onParsed });
      return infos.map(({ source, ...info }) => ({ ...info, offset: source.offset, ...(listed.has(info.path) && { listing: listed.get(info.path) }) }));
    },
    ({ size }) => {
      recalled = true;
      onRecalled?.(label);
      onProgress?.(size, size);
    },
  );
  if (recalled && listing) for (const p of paths) if (p.listing) listing.found(p.path, p.listing);
  return paths.map(({ offset, listing: _, ...info }) => ({ ...info, source: { file, offset } }));
}
