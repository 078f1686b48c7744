import { posix } from 'node:path';
import { UserError } from '../util/errors.js';

/**
 * The name-service files of the image: /etc/passwd, /etc/group and /etc/nsswitch.conf, as dockerTools'
 * fakeNss writes them, so that `id`, `whoami`, getpwuid() and DNS lookups work in a Nix-built image.
 *
 * Every field is checked before it is written: these files are `:`-separated lines, so a `:` or a line
 * break in a shell or home would add fields or whole accounts (a passwordless uid 0, say), and a home
 * that is a system directory would hand that directory to the user (its home is chowned to it).
 */

export interface ImageUser {
  name: string;
  uid: number;
  gid: number;
  /** Name of the group `gid`. */
  group: string;
  home: string;
  shell: string;
}

export const ROOT_USER: ImageUser = { name: 'root', uid: 0, gid: 0, group: 'root', home: '/root', shell: '/bin/sh' };

/** User and group names as useradd takes them by default (and as the recipe's schema says). */
export const ACCOUNT_NAME = /^[a-z_][a-z0-9_-]{0,31}$/;
/** Largest uid or gid: 2^31 - 1, which every libc and runtime takes as a positive id. */
export const MAX_ID = 2 ** 31 - 1;
/** Longest home or shell path (PATH_MAX). */
const MAX_PATH = 4095;

/**
 * Directories an image's system owns: a user's home is chowned to that user, so none of them, and
 * nothing inside the first group, can be a home (a home of `/etc` would let the user rewrite
 * /etc/passwd). `/` itself is fine: it is not created or chowned.
 */
const SYSTEM_TREES = ['/bin', '/boot', '/dev', '/etc', '/lib', '/lib32', '/lib64', '/libx32', '/nix', '/proc', '/root', '/sbin', '/sys', '/usr'];
const SYSTEM_DIRECTORIES = [
  '/home', '/media', '/mnt', '/opt', '/run', '/srv', '/tmp', '/var',
  '/var/cache', '/var/empty', '/var/lib', '/var/local', '/var/lock', '/var/log', '/var/mail', '/var/opt', '/var/run', '/var/spool', '/var/tmp',
];

/** Why `value` cannot be a user or group name in /etc/passwd or /etc/group, or null. */
export function accountNameProblem(value: string): string | null {
  if (ACCOUNT_NAME.test(value)) return null;
  return `${JSON.stringify(value)} is not a user or group name (lowercase letters, digits, _ and -, starting with a letter or _, at most 32)`;
}

/** Why `id` cannot be a uid or gid, or null. */
export function idProblem(id: number): string | null {
  return Number.isSafeInteger(id) && id >= 0 && id <= MAX_ID ? null : `${id} is not an id from 0 to ${MAX_ID}`;
}

/** Why `path` cannot be a home or shell field: not absolute and normalised, or holding `:` or a control character. */
export function passwdPathProblem(path: string): string | null {
  if (/[\u0000-\u001f\u007f]/.test(path)) return `${JSON.stringify(path)} holds a control character (a line break would start another account in /etc/passwd)`;
  if (path.includes(':')) return `${JSON.stringify(path)} holds ':', which separates the fields of /etc/passwd`;
  if (!path.startsWith('/')) return `${JSON.stringify(path)} is not an absolute path`;
  if (path.length > MAX_PATH) return `a path of ${path.length} characters is longer than the ${MAX_PATH} allowed`;
  if (path !== '/' && (posix.normalize(path) !== path || path.endsWith('/'))) return `${path} is not a normalised path (no //, . or .. and no trailing /)`;
  return null;
}

/**
 * Why `home` cannot be a user's home, or null: a field problem, a system directory (or one inside a
 * system tree), or a directory other parts of the image fill (`reserved`: the wheels' prefix, other
 * users' homes) or lie under, which the user would then own.
 */
export function homeProblem(home: string, reserved: readonly string[] = []): string | null {
  const field = passwdPathProblem(home);
  if (field) return field;
  if (home === '/') return null;
  const tree = SYSTEM_TREES.find((t) => home === t || home.startsWith(`${t}/`));
  if (tree) return `${home} ${home === tree ? 'is' : 'is inside'} ${tree}, a system directory the user would own`;
  if (SYSTEM_DIRECTORIES.includes(home)) return `${home} is a system directory the user would own`;
  const covered = reserved.find((r) => r === home || r.startsWith(`${home}/`));
  if (covered !== undefined) return `${home} ${covered === home ? 'is' : 'holds'} ${covered}, which the user would then own`;
  return null;
}

/**
 * Checks every field of every user before anything is written; throws a UserError naming the user and
 * the field. `reserved` are directories the user may not own (see homeProblem).
 */
export function checkImageUsers(users: readonly ImageUser[], reserved: readonly string[] = []): void {
  const homes = users.map((u) => u.home).filter((h) => h !== '/');
  for (const user of users) {
    const fail = (field: string, problem: string): never => {
      throw new UserError(`image user ${JSON.stringify(user.name)}: ${field}: ${problem}`);
    };
    const name = accountNameProblem(user.name);
    if (name) fail('name', name);
    const group = accountNameProblem(user.group);
    if (group) fail('group', group);
    const uid = idProblem(user.uid);
    if (uid) fail('uid', uid);
    const gid = idProblem(user.gid);
    if (gid) fail('gid', gid);
    const shell = passwdPathProblem(user.shell);
    if (shell) fail('shell', shell);
    if (user.uid === 0) {
      const home = passwdPathProblem(user.home);
      if (home) fail('home', home);
      continue;
    }
    const others = [...reserved, ...homes.filter((h) => h !== user.home)];
    const home = homeProblem(user.home, others);
    if (home) fail('home', home);
  }
}

/** Users in the given order, root first: `name:x:uid:gid:name:home:shell`. Every field is checked first. */
export function passwdFile(users: readonly ImageUser[]): string {
  const all = withRoot(users);
  checkImageUsers(all);
  return all.map((u) => `${u.name}:x:${u.uid}:${u.gid}:${u.name}:${u.home}:${u.shell}\n`).join('');
}

/** One group per distinct gid, named as its first user says; primary groups need no member list. */
export function groupFile(users: readonly ImageUser[]): string {
  const all = withRoot(users);
  checkImageUsers(all);
  const groups = new Map<number, string>();
  for (const user of all) {
    if (!groups.has(user.gid)) groups.set(user.gid, user.group);
  }
  return [...groups].map(([gid, name]) => `${name}:x:${gid}:\n`).join('');
}

/** Files first, then DNS for hosts: what glibc and musl expect when no nsswitch.conf says otherwise. */
export function nsswitchFile(): string {
  return 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n';
}

function withRoot(users: readonly ImageUser[]): ImageUser[] {
  return [ROOT_USER, ...users.filter((u) => u.name !== 'root')];
}
