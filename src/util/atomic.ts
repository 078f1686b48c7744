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
 * Like writeFileAtomically, for writers that write by position: `fill` gets the temporary file's handle.
 */
export async function writeFileAtomicallyAt(path: string, fill: (out: FileHandle) => Promise<void>): Promise<void> {
  const { target, temp } = await tempBeside(path);
  const forget = removeOnExit(temp);
  let out: FileHandle | undefined;
  try {
    out = await open(temp, 'wx', 0o644).catch((err: NodeJS.ErrnoException) => {
      throw new UserError(`cannot write ${path}: ${err.code ?? err.message}`, { cause: err });
    });
    await fill(out);
    await out.close();
    out = undefined;
    // No fsync, as above.
    await rename(temp, target);
  } catch (err) {
    await out?.close().catch(() => undefined);
    await rm(temp, { force: true });
    const e = err as NodeJS.ErrnoException;
    if (e.code && !(err instanceof UserError)) throw new UserError(`cannot write ${path}: ${e.code}`, { cause: err });
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
  const forget = removeOnExit(temp);
  try {
    await fill(temp);
    if (existing) {
      const old = `${temp}.old`;
      await rename(target, old);
      await rename(temp, target);
      await rm(old, { recursive: true, force: true });
    } else {
      await rename(temp, target);
    }
  } catch (err) {
    await rm(temp, { recursive: true, force: true });
    throw err;
  } finally {
    forget();
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
