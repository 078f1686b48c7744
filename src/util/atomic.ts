import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { lstat, mkdir, open, readdir, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { hostname } from 'node:os';
import type { Writable } from 'node:stream';
import { basename, dirname, join, resolve } from 'node:path';
import { removeOnExit } from './cleanup.js';
import { UserError } from './errors.js';
import { describeOsError, ENVIRONMENT_CODES } from './os-errors.js';

/*
 * Temporary outputs are named `.<name>.<pid>-<host>-<random>.tmp` beside the output (a directory's old
 * copy, while it is replaced, gets `.old` after that). A run killed with SIGKILL cannot remove its own:
 * the next run that writes the same output removes those whose process is gone (same host, that pid no
 * longer running), and any older than an hour that name another host or no process (older versions
 * named them `.<name>.<hex>.tmp` and `.<name>.tmp-XXXXXX`).
 */
export const STALE_AFTER_MS = 60 * 60 * 1000;
/** This machine, shortly: a pid means nothing on another host sharing the directory (NFS, a container). */
const HOST_TAG = createHash('sha256').update(hostname()).digest('hex').slice(0, 8);
/** `<pid>-<host>`: who writes a temporary file or directory, so that a later run can tell whose process is gone. */
export const OWNER_TAG = `${process.pid}-${HOST_TAG}`;

/**
 * Whether a leftover is abandoned: named by an owner tag of this host whose process no longer runs,
 * or older than an hour and not traceable to a running process here (another host's, or no tag).
 * `tag` is the name's part where an owner tag would start.
 */
export function abandoned(tag: string, mtimeMs: number, now = Date.now()): boolean {
  const owner = /^(\d+)-([0-9a-f]{8})-/.exec(tag);
  if (owner && owner[2] === HOST_TAG) return !processRunning(Number(owner[1]));
  const pid = /^(\d+)-/.exec(tag);
  // A name of an older version (`<pid>-…`): its process may be running here, however long it takes.
  if (pid && !owner && processRunning(Number(pid[1]))) return false;
  return now - mtimeMs > STALE_AFTER_MS;
}

/**
 * Writes a file through a temporary file beside it and renames it into place, so readers see either
 * the old file or the whole new one. On failure, or if the process is stopped (SIGINT, SIGTERM),
 * the temporary file is removed and `path` is left as it was.
 */
export async function writeFileAtomically(path: string, contents: string | Buffer | ((out: Writable) => Promise<void>)): Promise<void> {
  const write =
    typeof contents === 'function'
      ? contents
      : (out: Writable) => new Promise<void>((written, failed) => out.write(contents, (err) => (err ? failed(err) : written())));
  const { target, temp } = await tempBeside(path);
  const forget = removeOnExit(temp);
  const out = createWriteStream(temp, { flags: 'wx', mode: 0o644 });
  const fail = (err: unknown) => outputError(path, err);
  // Kept, not thrown: an 'error' event with no listener would end the process.
  let failure: NodeJS.ErrnoException | undefined;
  out.on('error', (err) => (failure ??= err));
  try {
    await new Promise<void>((ready) => {
      out.once('ready', ready);
      out.once('close', ready);
    });
    if (failure) throw fail(failure);
    await write(out);
    await new Promise<void>((closed) => {
      out.once('close', closed);
      out.end();
    });
    if (failure) throw failure;
    // No fsync: an image is rebuilt from its inputs, and flushing many GB to disk would cost more than
    // the build (docker save and skopeo do not either). The rename alone keeps readers from half files.
    await rename(temp, target);
  } catch (err) {
    if (!out.closed) {
      await new Promise<void>((closed) => {
        out.once('close', closed);
        out.destroy();
      });
    }
    await rm(temp, { force: true }).catch(() => {});
    throw fail(failure ?? err);
  } finally {
    forget();
  }
}

/**
 * Fills a temporary directory beside `path`, then renames it into place. An existing output is
 * replaced only if it is an OCI layout (or empty), never an unrelated directory. The old layout is
 * moved aside and removed after the new one is in place.
 */
export async function writeDirectoryAtomically(path: string, fill: (dir: string) => Promise<void>): Promise<void> {
  const pending = await PendingDirectory.create(path);
  try {
    await fill(pending.temp);
    await pending.commit();
  } catch (err) {
    await pending.abandon();
    throw err;
  }
}

/**
 * An error while writing the output `path` as a one-line UserError naming it: a full disk, a
 * read-only file system, a permission, any OS error (or a failed write reported by the hash pool).
 * Other errors pass unchanged.
 */
export function outputError(path: string, err: unknown): unknown {
  if (err instanceof UserError) return err;
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && (ENVIRONMENT_CODES.has(code) || /^E[A-Z0-9]+$/.test(code))) {
    return new UserError(`cannot write ${path}: ${describeOsError(err)}`, { cause: err });
  }
  return err;
}

/** A temporary name beside `target`: `.<name>.<pid>-<host>-<random>.tmp`. */
function tempName(target: string): string {
  return join(dirname(target), `.${basename(target)}.${OWNER_TAG}-${randomBytes(6).toString('hex')}.tmp`);
}

/**
 * Removes what killed runs left beside `target`: temporary files and directories (and a replaced
 * layout's `.old` copy) whose process is gone, or that are older than an hour and cannot be traced
 * to a process of this host. Returns the names removed. Never fails: it is housekeeping.
 */
export async function removeLeftovers(target: string, now = Date.now()): Promise<string[]> {
  const dir = dirname(target);
  const prefix = `.${basename(target)}.`;
  const names = await readdir(dir).catch(() => [] as string[]);
  const removed: string[] = [];
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const tag = name.slice(prefix.length);
    const ours = /^(\d+)-([0-9a-f]{8})-[0-9a-f]{12}\.tmp(\.old)?$/.exec(tag);
    const legacy = /^([0-9a-f]{12}\.tmp|tmp-[A-Za-z0-9]{6}(\.old)?)$/.test(tag);
    if (!ours && !legacy) continue;
    const path = join(dir, name);
    const st = await lstat(path).catch(() => undefined);
    if (!st || !abandoned(tag, st.mtimeMs, now)) continue;
    try {
      await rm(path, { recursive: true, force: true });
      removed.push(name);
    } catch {
      // Someone else's, or going away anyway: left for later.
    }
  }
  return removed;
}

/** Whether a process of this id runs (on this host); a process of another user counts. */
function processRunning(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function checkParent(target: string, shown: string): Promise<void> {
  const parent = await stat(dirname(target)).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return undefined;
    throw new UserError(`cannot write ${shown}: cannot reach directory ${dirname(target)}: ${describeOsError(err)}`);
  });
  if (!parent?.isDirectory()) throw new UserError(`cannot write ${shown}: directory ${dirname(target)} does not exist`);
}

/**
 * A file output's resolved path and a temporary name beside it (same file system, so rename works).
 * Leftovers of killed runs writing the same output are removed first.
 */
async function tempBeside(path: string): Promise<{ target: string; temp: string }> {
  const target = resolve(path);
  await checkParent(target, path);
  const existing = await lstat(target).catch(() => undefined);
  if (existing?.isDirectory()) throw new UserError(`cannot write ${path}: it is a directory`);
  await removeLeftovers(target);
  return { target, temp: tempName(target) };
}

/**
 * A file output being written by position over several steps (an archive whose layers are written into
 * it as they are made): a temp file beside `path`, renamed into place by `commit`, removed by `abandon`
 * or if the process is stopped.
 */
export class PendingFile {
  private constructor(
    readonly target: string,
    readonly temp: string,
    readonly handle: FileHandle,
    private readonly forget: () => void,
  ) {}

  static async open(path: string): Promise<PendingFile> {
    const { target, temp } = await tempBeside(path);
    const forget = removeOnExit(temp);
    // Readable too: a layer's ELF files are read back from where they were just written.
    const handle = await open(temp, 'wx+', 0o644).catch((err: unknown) => {
      forget();
      throw outputError(path, err);
    });
    return new PendingFile(target, temp, handle, forget);
  }

  async commit(): Promise<void> {
    try {
      await this.handle.close();
      // No fsync, as above.
      await rename(this.temp, this.target);
    } catch (err) {
      throw outputError(this.target, err);
    }
    this.forget();
  }

  async abandon(): Promise<void> {
    await this.handle.close().catch(() => undefined);
    await rm(this.temp, { force: true });
    this.forget();
  }
}

/**
 * A directory output filled over several steps: a temp directory beside `path`, renamed into place by
 * `commit` (replacing an existing OCI layout, never an unrelated directory), removed by `abandon`.
 */
export class PendingDirectory {
  private constructor(
    readonly target: string,
    readonly temp: string,
    private readonly replaces: boolean,
    private readonly forget: () => void,
  ) {}

  static async create(path: string): Promise<PendingDirectory> {
    const target = resolve(path);
    await checkParent(target, path);
    const existing = await lstat(target).catch(() => undefined);
    if (existing) {
      if (!existing.isDirectory()) throw new UserError(`cannot write an OCI layout to ${path}: it exists and is not a directory`);
      const names = await readdir(target).catch((err: unknown) => {
        throw outputError(path, err);
      });
      if (names.length > 0 && !names.includes('oci-layout')) {
        throw new UserError(`cannot write an OCI layout to ${path}: it is a directory that is not an OCI layout; remove it or pick another path`);
      }
    }
    await removeLeftovers(target);
    const temp = tempName(target);
    await mkdir(temp, { mode: 0o755 }).catch((err: unknown) => {
      throw outputError(path, err);
    });
    return new PendingDirectory(target, temp, existing !== undefined, removeOnExit(temp));
  }

  async commit(): Promise<void> {
    try {
      if (this.replaces) {
        const old = `${this.temp}.old`;
        const forgetOld = removeOnExit(old);
        await rename(this.target, old);
        await rename(this.temp, this.target);
        await rm(old, { recursive: true, force: true });
        forgetOld();
      } else {
        await rename(this.temp, this.target);
      }
    } catch (err) {
      throw outputError(this.target, err);
    }
    this.forget();
  }

  async abandon(): Promise<void> {
    await rm(this.temp, { recursive: true, force: true });
    this.forget();
  }
}
