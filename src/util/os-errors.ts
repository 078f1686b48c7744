/**
 * Errors of the operating system that a user's input or environment causes (a full disk, a read-only
 * or missing directory, a permission), in words for a one-line message. The CLI turns any such error
 * that reaches it into `nix2oci: cannot <do what> <path>: <why> (<CODE>)` with exit status 1, never an
 * "internal error"; the code that knows better (the output writer, the spooler) says more first.
 */
const WORDS: Record<string, string> = {
  ENOSPC: 'no space left on the device',
  EDQUOT: 'the disk quota is exceeded',
  EROFS: 'the file system is read-only',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  ENOENT: 'no such file or directory',
  ENOTDIR: 'a component of the path is not a directory',
  EISDIR: 'it is a directory',
  EEXIST: 'it already exists',
  EMFILE: 'too many open files (raise ulimit -n)',
  ENFILE: 'too many open files on this system',
  EFBIG: 'the file is too large for the file system',
  ENAMETOOLONG: 'the name is too long',
  ELOOP: 'too many symbolic links',
  EXDEV: 'it is on another file system',
  EIO: 'an input/output error (a failing disk?)',
  EBUSY: 'it is busy',
  ETXTBSY: 'it is busy',
  ENXIO: 'no such device',
  ENODEV: 'no such device',
  EAGAIN: 'the resource is temporarily unavailable',
};

/** Errno codes a user's environment causes: reported as user errors, with their path. */
export const ENVIRONMENT_CODES = new Set(Object.keys(WORDS));

/** The OS error in words with its code (`no space left on the device (ENOSPC)`), or its message. */
export function describeOsError(err: unknown): string {
  const e = err as NodeJS.ErrnoException | undefined;
  const code = typeof e?.code === 'string' ? e.code : undefined;
  if (code && WORDS[code]) return `${WORDS[code]} (${code})`;
  if (code) return code;
  const message = err instanceof Error ? err.message : String(err);
  return message.split('\n')[0]!;
}

/** What a failed system call was doing, in words: `write`, `create`… */
const VERBS: Record<string, string> = {
  open: 'open',
  read: 'read',
  write: 'write',
  mkdir: 'create the directory',
  mkdtemp: 'create a temporary directory in',
  rename: 'rename',
  link: 'link',
  unlink: 'remove',
  rmdir: 'remove',
  rm: 'remove',
  copyfile: 'copy',
  stat: 'read',
  lstat: 'read',
  scandir: 'read the directory',
  utime: 'touch',
  chmod: 'change the mode of',
  statfs: 'read',
  fstat: 'read',
  close: 'write',
  ftruncate: 'write',
};

/**
 * A one-line message for an OS error the user's environment caused (see ENVIRONMENT_CODES) that carries
 * the path it happened on, or null for anything else (a bug, which stays an internal error).
 */
export function environmentErrorMessage(err: unknown): string | null {
  const e = err as NodeJS.ErrnoException & { dest?: string };
  if (!(err instanceof Error) || typeof e.code !== 'string' || !ENVIRONMENT_CODES.has(e.code)) return null;
  const path = typeof e.path === 'string' ? e.path : undefined;
  if (path === undefined) return null;
  const verb = (e.syscall && VERBS[e.syscall]) ?? 'use';
  const where = e.syscall === 'mkdtemp' ? path.replace(/[^/]*$/, '').replace(/\/$/, '') || '/' : path;
  const hint = e.syscall === 'mkdtemp' && (e.code === 'ENOENT' || e.code === 'ENOTDIR') ? ' (is TMPDIR set to a directory that exists?)' : '';
  return `cannot ${verb} ${where}${e.dest ? ` to ${e.dest}` : ''}: ${describeOsError(err)}${hint}`;
}
