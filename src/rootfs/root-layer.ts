import type { LayerSource, TarEntry } from '../layer/types.js';
import type { Closure, NarNode, StorePathInfo } from '../nix/types.js';
import { storePathName } from '../nix/store-path.js';
import { UserError } from '../util/errors.js';
import { checkImageUsers, groupFile, nsswitchFile, passwdFile, ROOT_USER, type ImageUser } from './nss.js';
import { GENERATED, LOWER_LAYERS, RootTree, STORE_LAYERS } from './root-tree.js';
import { ClosureTrees } from './closure-trees.js';
import { checkEntrypoint, ImageView, type EntrypointSpec } from './entrypoint.js';
import { findEntries, readNarForListing, type NarWalker, type StoreTree} from './store-tree.js';
import { byCodePoints } from '../util/order.js';

/** What the image-root layer holds, from the resolved recipe. */
export interface RootSpec {
  /** Store paths (full, in the closure) linked into `/`; on a collision the earlier one wins. */
  copyToRoot: string[];
  /** Users besides root, with defaults filled in. */
  users: ImageUser[];
  /** Directories to create, absolute, with their modes. */
  directories: { path: string; mode: number }[];
  /**
   * Directories lower layers fill, such as the wheels' Python prefix: never covered by a link to a
   * store path (which would hide what the lower layer put there).
   */
  lowerLayerDirectories?: string[];
  /**
   * The files lower layers (the wheels) install, absolute: for the entrypoint check. When left out,
   * a program below `lowerLayerDirectories` is not checked.
   */
  lowerLayerFiles?: string[];
  /** What the container runs: checked to be in the image (see checkEntrypoint). */
  entrypoint?: EntrypointSpec;
}

export interface RootLayerOptions {
  /** Reads a store path's NAR; defaults to readNar over the closure's export files. */
  walk?: NarWalker;
  /** Told about collisions between copyToRoot paths; they are also collected in `warnings`. */
  warn?: (message: string) => void;
  /**
   * A store path's nodes noted when its export was read, holding at least every entry directly in its
   * `bin/` (as the wheel checks' listing does); undefined when none were noted. The search for
   * `bin/sh` and `bin/env` then reads no NAR.
   */
  listed?: (info: StorePathInfo) => NarNode[] | undefined;
}

export interface RootLayer {
  source: LayerSource;
  /** What `inspect` shows for the layer. */
  contents: string[];
  /** Warnings of the last run of `source` (collisions), one line each. */
  warnings: string[];
}

const FILE_MODE = 0o644;
const TMP_MODE = 0o1777;
const ROOT_HOME_MODE = 0o700;
const HOME_MODE = 0o755;
/** Collided paths named in one warning; the rest are counted. */
const COLLISIONS_SHOWN = 3;

/**
 * The image-root layer, like dockerTools' customisation layer: copyToRoot store paths linked into `/`,
 * `/tmp` (1777), `/etc/passwd`, `/etc/group`, `/etc/nsswitch.conf`, home directories, the recipe's
 * directories, and `/bin/sh` and `/usr/bin/env` when the copyToRoot paths do not provide them but
 * some store path does (see `shellLinkTargets`). Store paths are read for their names only.
 */
export function rootLayerSource(closure: Closure, spec: RootSpec, options: RootLayerOptions = {}): RootLayer {
  // Before any layer is made: a bad field would add accounts to /etc/passwd, a bad home hand a system directory to a user.
  checkImageUsers([ROOT_USER, ...spec.users], spec.lowerLayerDirectories ?? []);
  const infos = spec.copyToRoot.map((path) => {
    const info = closure.paths.get(path);
    if (!info) throw new UserError(`copyToRoot: ${path} is not in the closure`);
    return info;
  });
  const warnings: string[] = [];
  // Worked out once, however often the layer is tarred (a registry cache keys it by its tar, then writes it).
  let entries: Promise<TarEntry[]> | undefined;
  const layer: RootLayer = {
    contents: ['image-root'],
    warnings,
    source: async (sink) => {
      entries ??= rootEntries(closure, spec, infos, {
        walk: options.walk ?? readNarForListing,
        listed: options.listed ?? (() => undefined),
        warn: (message) => {
          warnings.push(message);
          options.warn?.(message);
        },
      });
      for (const entry of await entries) await sink.add(entry);
    },
  };
  return layer;
}

async function rootEntries(
  closure: Closure,
  spec: RootSpec,
  copyToRoot: StorePathInfo[],
  options: Required<RootLayerOptions>,
): Promise<TarEntry[]> {
  const tree = new RootTree();
  const users = [ROOT_USER, ...spec.users];
  tree.addDirectory('etc', 0o755);
  tree.addDirectory('tmp', TMP_MODE);
  for (const user of users) {
    // A user's home is theirs: a service running as that user writes its caches there (vLLM, Hugging Face).
    if (user.home !== '/') tree.addDirectory(user.home, user.uid === 0 ? ROOT_HOME_MODE : HOME_MODE, user.uid === 0 ? undefined : { uid: user.uid, gid: user.gid });
  }
  for (const directory of spec.directories) tree.addDirectory(directory.path, directory.mode);
  tree.addFile('etc/passwd', Buffer.from(passwdFile(spec.users)), FILE_MODE);
  tree.addFile('etc/group', Buffer.from(groupFile(spec.users)), FILE_MODE);
  tree.addFile('etc/nsswitch.conf', Buffer.from(nsswitchFile()), FILE_MODE);

  const collisions = new Map<string, { kept: string; dropped: string; paths: string[] }>();
  const trees: StoreTree[] = [];
  const collide = (path: string, kept: string, dropped: string): void => {
    const key = `${kept}\0${dropped}`;
    const entry = collisions.get(key) ?? { kept, dropped, paths: [] };
    entry.paths.push(path);
    collisions.set(key, entry);
  };
  const closureTrees = new ClosureTrees(closure, options.walk);
  for (const info of copyToRoot) {
    const storeTree = await closureTrees.tree(info.path);
    trees.push(storeTree);
    await tree.linkStorePath(info.path, storeTree, collide, closureTrees.resolveDirectory);
  }
  for (const path of spec.lowerLayerDirectories ?? []) {
    await tree.openLinks(path, collide, closureTrees.resolveDirectory);
    tree.keepForLowerLayers(path, collide);
  }

  // A store path's bin (or usr/bin) may be a link to a directory: look inside before deciding.
  await tree.openLinks('bin', collide, closureTrees.resolveDirectory);
  await tree.openLinks('usr/bin', collide, closureTrees.resolveDirectory);
  const wantSh = tree.lookup('bin/sh') === 'absent';
  const wantEnv = tree.lookup('usr/bin/env') === 'absent';
  if (wantSh || wantEnv) {
    const targets = await shellLinkTargets(closure, copyToRoot, trees, options.walk, { sh: wantSh, env: wantEnv }, options.listed);
    if (targets.sh) tree.addSymlink('bin/sh', targets.sh);
    if (targets.env) tree.addSymlink('usr/bin/env', targets.env);
  }
  for (const { kept, dropped, paths } of collisions.values()) options.warn(collisionWarning(kept, dropped, paths));
  if (spec.entrypoint) {
    const image = new ImageView(tree, closure, closureTrees, spec.lowerLayerFiles ?? null, spec.lowerLayerDirectories ?? []);
    const warning = await checkEntrypoint(spec.entrypoint, image);
    if (warning) options.warn(warning);
  }
  return tree.entries();
}

/**
 * Where `/bin/sh` and `/usr/bin/env` should point. Deterministic: the copyToRoot paths in recipe
 * order are searched first, then the rest of the closure ordered by store path name (then full path).
 * Within that order the first `bin/sh` wins; only when none has one, the first `bin/bash`. `env` is
 * the first `bin/env` (coreutils, busybox). Closure paths are only read up to their `bin` entries.
 */
export async function shellLinkTargets(
  closure: Closure,
  copyToRoot: StorePathInfo[],
  copyToRootTrees: StoreTree[],
  walk: NarWalker,
  want: { sh: boolean; env: boolean },
  listed: RootLayerOptions['listed'] = () => undefined,
): Promise<{ sh?: string; env?: string }> {
  let sh: string | undefined;
  let bash: string | undefined;
  let env: string | undefined;
  const note = (path: string, has: (entry: string) => boolean): void => {
    if (want.sh && sh === undefined && has('bin/sh')) sh = `${path}/bin/sh`;
    if (want.sh && bash === undefined && has('bin/bash')) bash = `${path}/bin/bash`;
    if (want.env && env === undefined && has('bin/env')) env = `${path}/bin/env`;
  };
  const done = (): boolean => (!want.sh || sh !== undefined) && (!want.env || env !== undefined);

  copyToRoot.forEach((info, i) => note(info.path, (entry) => hasLeaf(copyToRootTrees[i]!, entry)));
  // A bash from copyToRoot beats an sh elsewhere: the recipe chose that store path for the root.
  if (want.sh && sh === undefined && bash !== undefined) sh = bash;

  if (!done()) {
    const linked = new Set(copyToRoot.map((info) => info.path));
    const rest = [...closure.paths.values()]
      .filter((info) => !linked.has(info.path))
      .sort((a, b) => byCodePoints(storePathName(a.path), storePathName(b.path)) || byCodePoints(a.path, b.path));
    // Several store paths are read at once (each read is mostly waiting), and taken in order.
    const finding: Promise<Set<string>>[] = [];
    const find = (i: number): void => {
      const info = rest[i];
      if (!info) return;
      const nodes = listed(info);
      finding[i] = nodes
        ? Promise.resolve(new Set(nodes.filter((n) => n.type !== 'directory' && SHELLS.includes(n.path)).map((n) => n.path)))
        : findEntries(info, SHELLS, walk);
      // Read ahead of need: a failure counts only if the search gets that far.
      finding[i].catch(() => {});
    };
    for (let i = 0; i < FINDS_AHEAD; i++) find(i);
    for (const [i, info] of rest.entries()) {
      const found = await finding[i]!;
      find(i + FINDS_AHEAD);
      note(info.path, (entry) => found.has(entry));
      if (done()) break;
    }
  }
  return {
    ...(want.sh && (sh ?? bash) !== undefined && { sh: sh ?? bash }),
    ...(want.env && env !== undefined && { env }),
  };
}

const SHELLS = ['bin/bash', 'bin/env', 'bin/sh'];
/** Store paths searched for `bin/sh` and `bin/env` at once. */
const FINDS_AHEAD = 8;

function hasLeaf(tree: StoreTree, path: string): boolean {
  let node: StoreTree | undefined = tree;
  for (const part of path.split('/')) node = node?.kind === 'directory' ? node.children.get(part) : undefined;
  return node?.kind === 'leaf';
}

function collisionWarning(kept: string, dropped: string, paths: string[]): string {
  const shown = paths.slice(0, COLLISIONS_SHOWN).join(', ');
  const named = paths.length > COLLISIONS_SHOWN ? `${shown} and ${paths.length - COLLISIONS_SHOWN} more` : shown;
  const them = paths.length === 1 ? 'it' : 'them';
  if (kept === GENERATED) return `copyToRoot: ${named} of ${dropped} left out: nix2oci writes ${them} itself`;
  if (kept === STORE_LAYERS) return `copyToRoot: ${named} of ${dropped} left out: it would cover the Nix store`;
  if (kept === LOWER_LAYERS) return `copyToRoot: ${named} of ${dropped} left out: a lower layer (the wheels) fills ${them}`;
  return `copyToRoot: ${named} ${paths.length === 1 ? 'is' : 'are'} in both ${kept} and ${dropped}; using ${kept} (listed first)`;
}
