/**
 * The name-service files of the image: /etc/passwd, /etc/group and /etc/nsswitch.conf, as dockerTools'
 * fakeNss writes them, so that `id`, `whoami`, getpwuid() and DNS lookups work in a Nix-built image.
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

/** Users in the given order, root first: `name:x:uid:gid:name:home:shell`. */
export function passwdFile(users: readonly ImageUser[]): string {
  return withRoot(users)
    .map((u) => `${u.name}:x:${u.uid}:${u.gid}:${u.name}:${u.home}:${u.shell}\n`)
    .join('');
}

/** One group per distinct gid, named as its first user says; primary groups need no member list. */
export function groupFile(users: readonly ImageUser[]): string {
  const groups = new Map<number, string>();
  for (const user of withRoot(users)) {
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
