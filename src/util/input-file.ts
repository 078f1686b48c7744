import { open, type FileHandle } from 'node:fs/promises';
import { UserError } from './errors.js';
import { formatBytes } from './units.js';

/**
 * Reads a small input file whole (a path-info file, an index): a regular file or a pipe (process
 * substitution), at most `limit` bytes. A device (`/dev/zero`, `/dev/urandom`), a directory or an
 * endless pipe is refused with a one-line error naming the file; the content is never quoted.
 */
export async function readInputFile(file: string, what: string, limit: number): Promise<Buffer> {
  let handle: FileHandle;
  try {
    handle = await open(file, 'r');
  } catch (err) {
    throw new UserError(`${file}: cannot read ${what}: ${describeOpenError(err)}`);
  }
  try {
    const st = await handle.stat();
    const regular = st.isFile();
    if (!regular && !st.isFIFO() && !st.isSocket()) throw new UserError(`${file}: cannot read ${what}: it is ${fileKind(st)}, not a file`);
    if (regular && st.size > limit) {
      throw new UserError(`${file}: ${what} of ${formatBytes(st.size)} is larger than the ${formatBytes(limit)} allowed`);
    }
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const buffer = Buffer.allocUnsafe(Math.min(1 << 20, limit + 1 - total));
      let bytesRead: number;
      try {
        ({ bytesRead } = await handle.read(buffer, 0, buffer.length, regular ? total : null));
      } catch (err) {
        throw new UserError(`${file}: cannot read ${what}: read failed at byte ${total}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
      }
      if (bytesRead === 0) break;
      chunks.push(buffer.subarray(0, bytesRead));
      total += bytesRead;
      if (total > limit) throw new UserError(`${file}: ${what} is larger than the ${formatBytes(limit)} allowed (stopped reading at byte ${limit})`);
    }
    return Buffer.concat(chunks, total);
  } finally {
    await handle.close();
  }
}

/** What a stat says a path is, in words for messages: `a pipe`, `a character device`… */
export function fileKind(st: { isFile(): boolean; isDirectory(): boolean; isFIFO(): boolean; isSocket(): boolean; isCharacterDevice(): boolean; isBlockDevice(): boolean; isSymbolicLink(): boolean }): string {
  if (st.isFile()) return 'a regular file';
  if (st.isFIFO()) return 'a pipe';
  if (st.isSocket()) return 'a socket';
  if (st.isDirectory()) return 'a directory';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSymbolicLink()) return 'a symbolic link';
  return 'not a regular file';
}

function describeOpenError(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return 'no such file';
  if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
  if (code === 'EISDIR') return 'it is a directory, not a file';
  return code ?? 'cannot open it';
}
