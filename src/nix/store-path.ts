
export const STORE_DIR = '/nix/store';

/** Nix's base-32 digits: no e, o, u, t (to avoid words). Used in store path hashes and `sha256:` hashes. */
export const NIX_BASE32_DIGITS = '0123456789abcdfghijklmnpqrsvwxyz';

const HASH_CHARS = 32;
const MAX_NAME_CHARS = 211;
const PREFIX = `${STORE_DIR}/`;
const HASH_PART = /^[0-9a-df-np-sv-z]{32}$/;
const NAME_PART = /^[A-Za-z0-9+\-._?=]+$/;

/**
 * Why `path` is not a valid store path, or null when it is. Same rules as Nix's parseStorePath:
 * `/nix/store/` + 32 nix-base32 chars + `-` + a name of 1–211 chars from `[A-Za-z0-9+-._?=]`, not starting with `.`.
 */
export function storePathProblem(path: string): string | null {
  if (!path.startsWith(PREFIX)) return `it is not in ${STORE_DIR}`;
  const base = path.slice(PREFIX.length);
  if (base.length < HASH_CHARS + 2 || base[HASH_CHARS] !== '-') return 'it does not have the form <32-char hash>-<name>';
  if (!HASH_PART.test(base.slice(0, HASH_CHARS))) return 'its hash part has characters outside nix-base32';
  const name = base.slice(HASH_CHARS + 1);
  if (name.length > MAX_NAME_CHARS) return `its name is longer than ${MAX_NAME_CHARS} characters`;
  if (!NAME_PART.test(name)) return 'its name has characters outside [A-Za-z0-9+-._?=]';
  if (name.startsWith('.')) return "its name starts with '.'";
  return null;
}

export function isStorePath(path: string): boolean {
  return storePathProblem(path) === null;
}

/**
 * The name part of a store path: `/nix/store/<hash>-python3-3.11.9` → `python3-3.11.9`. For display
 * and matching: anything else (a wheel's file name, `image-root`) is returned as its last component.
 */
export function storePathName(path: string): string {
  if (isStorePath(path)) return path.slice(PREFIX.length + HASH_CHARS + 1);
  const base = path.slice(path.lastIndexOf('/') + 1);
  return HASHED_BASENAME.test(base) ? base.slice(HASH_CHARS + 1) : base;
}

/** A store path's last component: `<32 nix-base32 chars>-<name>`. */
const HASHED_BASENAME = /^[0-9a-df-np-sv-z]{32}-./;

/** The store path a file lies in (`/nix/store/<hash>-<name>/lib/…` → `/nix/store/<hash>-<name>`), or null. */
export function storePathOf(file: string): string | null {
  const match = /^\/nix\/store\/[0-9a-df-np-sv-z]{32}-[^/]+/.exec(file);
  return match && isStorePath(match[0]) ? match[0] : null;
}
