/** One store path as read from a `nix-store --export` stream (and optionally checked against path-info). */
export interface StorePathInfo {
  /** Full store path, e.g. `/nix/store/<32 chars>-python3-3.11.9`. */
  path: string;
  /** Full store paths this path refers to (may include itself). Sorted. */
  references: string[];
  /** The deriver's store path, or null when the export names none. */
  deriver: string | null;
  /** sha256 of the NAR serialisation, lowercase hex (64 chars). */
  narHash: string;
  /** Size of the NAR serialisation in bytes. */
  narSize: number;
  /** Where the NAR bytes lie: a seekable file and the byte offset of the NAR's first byte in it. */
  source: { file: string; offset: number };
}

/** A node of a NAR, in NAR order (depth first, entries sorted by name). */
export type NarNode =
  | { type: 'directory'; path: string }
  | { type: 'regular'; path: string; executable: boolean; size: number }
  | { type: 'symlink'; path: string; target: string };
// `path` is relative to the store path's root: '' for the root itself, 'bin/python3' for a nested one.

/**
 * Receives a NAR's nodes in order. For a regular file, `contents` yields its bytes in chunks
 * (never the whole file at once); the visitor must consume it fully before returning.
 */
export interface NarVisitor {
  directory(node: Extract<NarNode, { type: 'directory' }>): void | Promise<void>;
  regular(node: Extract<NarNode, { type: 'regular' }>, contents: AsyncIterable<Buffer>): void | Promise<void>;
  symlink(node: Extract<NarNode, { type: 'symlink' }>): void | Promise<void>;
}

/** A whole, checked closure: every reference of every path is in it. */
export interface Closure {
  /** By full store path, in sorted order of path. */
  paths: Map<string, StorePathInfo>;
  /** Paths no other path in the closure refers to (the closure's roots), sorted. */
  roots: string[];
}
