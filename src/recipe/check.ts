import { posix } from 'node:path';
import { UserError } from '../util/errors.js';
import type { Recipe } from './schema.js';
import { homeProblem, passwdPathProblem } from '../rootfs/nss.js';
import { whiteoutInPath } from '../tar/whiteout.js';

/** Where wheels install when the recipe names no `python.prefix`. */
export const DEFAULT_PYTHON_PREFIX = '/opt/python';

/** Files the image-root layer writes itself; a recipe directory cannot take their place. */
export const GENERATED_FILES = ['/etc/passwd', '/etc/group', '/etc/nsswitch.conf'] as const;

/**
 * The checks a JSON Schema cannot express: value ranges, shapes that depend on a value, uniqueness,
 * references between keys. Run on a schema-valid recipe; `where` names it in errors.
 */
export function checkRecipe(recipe: Recipe, where: string): void {
  const fail = (message: string): never => {
    throw new UserError(`${where}: ${message}`);
  };

  if (recipe.tag !== undefined && recipe.name === undefined) fail('/tag: a tag needs a name (set name, e.g. "nix2oci/demo")');

  recipe.ports?.forEach((port, i) => {
    const number = Number(port.split('/')[0]);
    if (number < 1 || number > 65535) fail(`/ports/${i}: port ${number} is outside 1-65535`);
  });

  if (recipe.healthcheck) {
    const problem = healthcheckTestProblem(recipe.healthcheck.test);
    if (problem) fail(`/healthcheck/test: ${problem}`);
  }

  const names = new Map<string, number>();
  const uids = new Map<number, number>();
  recipe.users?.forEach((user, i) => {
    if (user.name === 'root' || user.uid === 0) fail(`/users/${i}: root (uid 0) is always present; list only other users`);
    const sameName = names.get(user.name);
    if (sameName !== undefined) fail(`/users/${i}: user '${user.name}' is already /users/${sameName}`);
    const sameUid = uids.get(user.uid);
    if (sameUid !== undefined) fail(`/users/${i}: uid ${user.uid} is already used by /users/${sameUid}`);
    names.set(user.name, i);
    uids.set(user.uid, i);
    // Every string that reaches /etc/passwd is checked against what its fields can hold.
    if (user.shell !== undefined) {
      const problem = passwdPathProblem(user.shell);
      if (problem) fail(`/users/${i}/shell: ${problem}`);
    }
    // A home of / is usual for service accounts; there is nothing to create then.
    if (user.home !== undefined && user.home !== '/') {
      const home = checkImagePath(user.home, `/users/${i}/home`, fail);
      // The user owns its home: not a system directory, nor one that holds the wheels' prefix or another home.
      const others = (recipe.users ?? []).filter((_, j) => j !== i).map((u) => trimSlashes(u.home ?? `/home/${u.name}`));
      const problem = homeProblem(home, [recipe.python?.prefix ?? DEFAULT_PYTHON_PREFIX, ...others.filter((h) => h !== home)]);
      if (problem) fail(`/users/${i}/home: ${problem}`);
    }
  });

  // A group name stands for one gid and a gid has one name (root's is root).
  const groupGids = new Map<string, number>([['root', 0]]);
  const gidGroups = new Map<number, string>([[0, 'root']]);
  recipe.users?.forEach((user, i) => {
    if (user.group === undefined) return;
    const gid = groupGids.get(user.group);
    if (gid !== undefined && gid !== user.gid) fail(`/users/${i}/group: group '${user.group}' is gid ${gid}, not ${user.gid}`);
    const name = gidGroups.get(user.gid);
    if (name !== undefined && name !== user.group) fail(`/users/${i}/group: gid ${user.gid} is already group '${name}'`);
    groupGids.set(user.group, user.gid);
    gidGroups.set(user.gid, user.group);
  });

  if (recipe.python?.prefix !== undefined) {
    const whiteout = whiteoutInPath(recipe.python.prefix);
    if (whiteout) fail(`/python/prefix: ${JSON.stringify(whiteout.component)} ${whiteout.problem}`);
  }

  const directories = new Map<string, number>();
  recipe.directories?.forEach((directory, i) => {
    const path = checkImagePath(directory.path, `/directories/${i}/path`, fail);
    if ((GENERATED_FILES as readonly string[]).includes(path)) fail(`/directories/${i}/path: ${path} is a file nix2oci writes`);
    const same = directories.get(path);
    if (same !== undefined) fail(`/directories/${i}/path: ${path} is already /directories/${same}`);
    directories.set(path, i);
    if (directory.mode !== undefined && parseMode(directory.mode) > 0o7777) {
      fail(`/directories/${i}/mode: ${directory.mode} is not a file mode (at most 7777)`);
    }
  });

  const user = recipe.user;
  if (user !== undefined) {
    const [name] = user.split(':') as [string];
    if (!/^[0-9]+$/.test(name) && name !== 'root' && !names.has(name)) {
      const known = ['root', ...names.keys()].join(', ');
      fail(`/user: '${name}' is not a user of the image (${known}); add it to users or give a uid`);
    }
  }
}

/** Why a healthcheck test is malformed, or null. Docker's rules: CMD argv, CMD-SHELL one string, NONE alone. */
export function healthcheckTestProblem(test: readonly string[]): string | null {
  const [kind, ...rest] = test;
  if (kind !== 'CMD' && kind !== 'CMD-SHELL' && kind !== 'NONE') {
    return `must start with CMD, CMD-SHELL or NONE, got ${JSON.stringify(kind ?? '')}`;
  }
  if (kind === 'NONE' && rest.length > 0) return 'NONE takes nothing after it';
  if (kind === 'CMD' && rest.length === 0) return 'CMD needs a command after it';
  if (kind === 'CMD-SHELL' && rest.length !== 1) return 'CMD-SHELL takes exactly one command string';
  return null;
}

/** `0755`, `755`, `1777` → the mode number. */
export function parseMode(text: string): number {
  return parseInt(text, 8);
}

/**
 * An absolute, normalised path the image root may create: not `/` itself and not inside the Nix store,
 * which the store-path layers own. Returns it without a trailing slash.
 */
function checkImagePath(path: string, pointer: string, fail: (message: string) => never): string {
  const trimmed = trimSlashes(path);
  if (posix.normalize(trimmed) !== trimmed) fail(`${pointer}: ${path} is not a normalised path (no //, . or ..)`);
  if (trimmed === '/') fail(`${pointer}: cannot be / itself`);
  if (trimmed === '/nix' || trimmed.startsWith('/nix/')) fail(`${pointer}: ${path} is inside /nix, which the store layers own`);
  const whiteout = whiteoutInPath(trimmed);
  if (whiteout) fail(`${pointer}: ${JSON.stringify(whiteout.component)} ${whiteout.problem}`);
  return trimmed;
}

/** `/a/b/` → `/a/b`; `/` stays. */
export function trimSlashes(path: string): string {
  return path.length > 1 ? path.replace(/\/+$/, '') || '/' : path;
}
