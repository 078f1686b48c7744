import { randomBytes } from 'node:crypto';
import { close, createWriteStream, fsync, open } from 'node:fs';
import { chmod, lstat, mkdtemp, readdir, rename, rm, stat } from 'node:fs/promises';
import { promisify } from 'node:util';
import type { Writable } from 'node:stream';
import { basename, dirname, join, resolve } from 'node:path';
import { removeOnExit } from '../util/cleanup.js';
import { UserError } from '../util/errors.js';

const fsOpen = promisify(open);
const fsFsync = promisify(fsync);
const fsClose = promisify(close);

/**
 * Writes a file through a temporary file beside it and renames it into place, so readers see either
 * the old file or the whole new one. On failure, or if the process is stopped (SIGINT, SIGTERM),
 * the temporary file is removed and `path` is left as it was.
 */
export async function writeFileAtomically(path: string, write: (out: Writable) => Promise<void>): Promise<void> {
  const target = resolve(path);
  await checkParent(target, path);
  const existing = await lstat(target).catch(() => undefined);
  if (existing?.isDirectory()) throw new UserError(`cannot write ${path}: it is a directory`);
  const temp = join(dirname(target), `.${basename(target)}.${randomBytes(6).toString('hex')}.tmp`);
  const forget = removeOnExit(temp);
  let fd: number | undefined;
  let out: Writable | undefined;
  try {
    fd = await fsOpen(temp, 'wx', 0o644).catch((err: NodeJS.ErrnoException) => {
      throw new UserError(`cannot write ${path}: ${err.code ?? err.message}`, { cause: err });
    });
    // A plain fd rather than a FileHandle: FileHandle.sync() after its stream ended never settles on Node 20.
    const stream = createWriteStream('', { fd, autoClose: false });
    out = stream;
    await write(stream);
    await new Promise<void>((ok, fail) => {
      stream.once('error', fail);
      stream.end(() => ok());
    });
    // fsync before rename: after a crash the name must not point at a half-flushed file.
    await fsFsync(fd);
    const closing = fd;
    fd = undefined;
    await fsClose(closing);
    await rename(temp, target);
  } catch (err) {
    out?.destroy();
    if (fd !== undefined) await fsClose(fd).catch(() => {});
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
