import { realpath, stat } from 'node:fs/promises';

/**
 * A regular file's identity: its real path, device, inode, size, and modification and change times in
 * nanoseconds. A file with the same identity has not been written since (any write, rename over it or
 * copy gives another; the change time cannot be set back), so what was read from it still holds — the
 * rule git's index and Bazel's digest cache rely on. Null when `file` is not a readable regular file.
 */
export async function fileIdentity(file: string): Promise<{ key: string; size: number } | null> {
  try {
    const [st, real] = await Promise.all([stat(file, { bigint: true }), realpath(file)]);
    if (!st.isFile()) return null;
    return { key: JSON.stringify([real, st.dev, st.ino, st.size, st.mtimeNs, st.ctimeNs].map(String)), size: Number(st.size) };
  } catch {
    return null;
  }
}

/** Remembers what was read from input files, by their identity (the layer cache keeps it between builds). */
export interface InputMemo<T> {
  recall(identity: string): Promise<T | null>;
  remember(identity: string, value: T): Promise<void>;
}

/**
 * `read(file)`, or what it gave last time when the file is unchanged since (see fileIdentity). A file
 * written to while being read is not remembered: what was read stands for neither version.
 */
export async function readRemembered<T>(
  file: string,
  memo: InputMemo<T> | undefined,
  read: () => Promise<T>,
  onRecalled?: (identity: { key: string; size: number }) => void,
): Promise<T> {
  const before = memo ? await fileIdentity(file) : null;
  if (!memo || !before) return read();
  const known = await memo.recall(before.key);
  if (known !== null) {
    onRecalled?.(before);
    return known;
  }
  const value = await read();
  if ((await fileIdentity(file))?.key === before.key) await memo.remember(before.key, value);
  return value;
}
