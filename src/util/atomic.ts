import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { chmod, lstat, mkdtemp, open, readdir, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import type { Writable } from 'node:stream';
import { basename, dirname, join, resolve } from 'node:path';
import { removeOnExit } from './cleanup.js';
import { UserError } from './errors.js';

/**
 * Writes a file through a temporary file beside it and renames it into place, so readers see either
 * the old file or the whole new one. On failure, or if the process is stopped (SIGINT, SIGTERM),
 * the temporary file is removed and `path` is left as it was.
 */
export async function writeFileAtomically(path: string, write: (out: Writable) => Promise<void>): Promise<void> {
  const { target, temp } = await tempBeside(path);
  const forget = removeOnExit(temp);
  const out = createWriteStream(temp, { flags: 'wx', mode: 0o644 });
  // Kept, not thrown: an 'error' event with no listener would end the process.
  let failure: NodeJS.ErrnoException | undefined;
  out.on('error', (err) => (failure ??= err));
  try {
    await new Promise<void>((ready) => {
      out.once('ready', ready);
      out.once('close', ready);
    });
    if (failure) throw new UserError(`cannot write ${path}: ${failure.code ?? failure.message}`, { cause: failure });
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
    await rm(temp, { force: true });
    throw err;
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

async function checkParent(target: string, shown: string): Promise<void> {
  const parent = await stat(dirname(target)).catch(() => undefined);
  if (!parent?.isDirectory()) throw new UserError(`cannot write ${shown}: directory ${dirname(target)} does not exist`);
}

/** A file output's resolved path and a temporary name beside it (same file system, so rename works). */
async function tempBeside(path: string): Promise<{ target: string; temp: string }> {
  const target = resolve(path);
  await checkParent(target, path);
  const existing = await lstat(target).catch(() => undefined);
  if (existing?.isDirectory()) throw new UserError(`cannot write ${path}: it is a directory`);
  return { target, temp: join(dirname(target), `.${basename(target)}.${randomBytes(6).toString('hex')}.tmp`) };
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
    const handle = await open(temp, 'wx', 0o644).catch((err: NodeJS.ErrnoException) => {
      forget();
      throw new UserError(`cannot write ${path}: ${err.code ?? err.message}`, { cause: err });
    });
    return new PendingFile(target, temp, handle, forget);
  }

  async commit(): Promise<void> {
    await this.handle.close();
    // No fsync, as above.
    await rename(this.temp, this.target);
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
      const names = await readdir(target);
      if (names.length > 0 && !names.includes('oci-layout')) {
        throw new UserError(`cannot write an OCI layout to ${path}: it is a directory that is not an OCI layout; remove it or pick another path`);
      }
    }
    const temp = await mkdtemp(join(dirname(target), `.${basename(target)}.tmp-`));
    // mkdtemp makes it private; the output is an ordinary directory.
    await chmod(temp, 0o755);
    return new PendingDirectory(target, temp, existing !== undefined, removeOnExit(temp));
  }

  async commit(): Promise<void> {
    if (this.replaces) {
      const old = `${this.temp}.old`;
      await rename(this.target, old);
      await rename(this.temp, this.target);
      await rm(old, { recursive: true, force: true });
    } else {
      await rename(this.temp, this.target);
    }
    this.forget();
  }

  async abandon(): Promise<void> {
    await rm(this.temp, { recursive: true, force: true });
    this.forget();
  }
}
