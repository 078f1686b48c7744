import { posix } from 'node:path';
import type { Closure } from '../nix/types.js';
import { UserError } from '../util/errors.js';
import type { ClosureTrees } from './closure-trees.js';
import { absoluteTarget, type RootTree } from './root-tree.js';

/** The PATH container runtimes use when an image sets none (Docker's and containerd's default). */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** What the container runs, to be found in the image when it is built (from the resolved recipe). */
export interface EntrypointSpec {
  /** The program: entrypoint[0], else cmd[0]. */
  program: string;
  /** Where it was set, for messages: `entrypoint` or `cmd`. */
  key: 'entrypoint' | 'cmd';
  /** Directories searched for a program without a `/` (the image's PATH). */
  path: string[];
  /** Searched too: what the build adds to PATH (the wheels' bin). */
  extraPath?: string[];
  /** For a relative program with a `/`. */
  workingDir: string;
  /** The image's volumes: a program in one may be mounted at run time (a warning, not an error). */
  volumes: string[];
  /** `checks.allowMissingEntrypoint`: a program not in the image is a warning (it is mounted at run time). */
  allowMissing: boolean;
}

/** What lies at a path of the image once its layers are unpacked, without following a last symlink. */
type Found =
  | { kind: 'directory' }
  | { kind: 'file'; executable: boolean | undefined }
  | { kind: 'link'; target: string }
  | { kind: 'missing' }
  /** A lower layer's part the build did not describe: not checked. */
  | { kind: 'unknown' };

/** Symlink chains longer than this are loops; Linux's own limit is 40. */
const MAX_LINK_HOPS = 40;

/**
 * Looks the program up in the image as a runtime would (through every symbolic link: the image root's
 * links into the store, links inside store paths, the wheels' files) and returns a warning, or throws
 * a UserError when it is not there, is not a file or is not executable. A program in a volume, or with
 * `checks.allowMissingEntrypoint`, is only warned about: it may be mounted at run time.
 */
export async function checkEntrypoint(spec: EntrypointSpec, image: ImageView): Promise<string | null> {
  const problem = await problemOf(spec, image);
  if (problem === null) return null;
  const line = `${spec.key} ${problem.program} ${problem.why}`;
  const volume = spec.volumes.find((v) => problem.resolved === v || problem.resolved.startsWith(`${v.replace(/\/+$/, '')}/`));
  if (volume !== undefined) return `${line}; it lies in the volume ${volume}, so it must be mounted there at run time`;
  if (spec.allowMissing) return `${line}; allowed by checks.allowMissingEntrypoint: it must be mounted at run time`;
  const hint = problem.missing ? ' (if it is mounted at run time, set checks.allowMissingEntrypoint in the recipe)' : '';
  throw new UserError(`${line}${hint}`);
}

interface Problem {
  program: string;
  /** The absolute path it was looked for at. */
  resolved: string;
  why: string;
  /** Not there at all (rather than there but unusable). */
  missing: boolean;
}

async function problemOf(spec: EntrypointSpec, image: ImageView): Promise<Problem | null> {
  const { program } = spec;
  if (program === '') return { program: '""', resolved: '', why: 'is empty', missing: false };
  if (!program.includes('/')) {
    for (const dir of [...spec.path, ...(spec.extraPath ?? [])]) {
      if (!dir.startsWith('/')) continue;
      const result = await image.resolve(posix.join(dir, program));
      if (result.found.kind === 'unknown') return null;
      if (result.found.kind === 'file' && result.found.executable !== false) return null;
    }
    return { program, resolved: program, why: `is in none of the image's PATH directories (${spec.path.join(':') || 'none'})`, missing: true };
  }
  const absolute = program.startsWith('/') ? posix.normalize(program) : posix.join(spec.workingDir || '/', program);
  const result = await image.resolve(absolute);
  const via = result.real !== absolute ? ` (it leads to ${result.real})` : '';
  switch (result.found.kind) {
    case 'unknown':
      return null;
    case 'file':
      return result.found.executable === false ? { program, resolved: absolute, why: `is not executable${via}`, missing: false } : null;
    case 'directory':
      return { program, resolved: absolute, why: `is a directory${via}`, missing: false };
    case 'link':
      return { program, resolved: absolute, why: 'is a symbolic link that goes round in circles', missing: false };
    case 'missing':
      return { program, resolved: absolute, why: `is not in the image${result.missing ? `: ${result.missing}` : via}`, missing: true };
  }
}

/**
 * The image's file tree as far as the build knows it: the image root's entries (the top layer), the
 * closure's store paths under /nix/store, and the files the layers between install (the wheels).
 */
export class ImageView {
  readonly #lowerFiles: Set<string> | null;
  readonly #lowerDirs = new Set<string>();

  constructor(
    private readonly root: RootTree,
    private readonly closure: Closure,
    private readonly trees: ClosureTrees,
    /** Absolute paths of the files lower layers install; null when not known (then not checked there). */
    lowerFiles: readonly string[] | null,
    private readonly lowerDirectories: readonly string[],
  ) {
    this.#lowerFiles = lowerFiles ? new Set(lowerFiles) : null;
    for (const file of lowerFiles ?? []) {
      for (let dir = posix.dirname(file); dir !== '/'; dir = posix.dirname(dir)) this.#lowerDirs.add(dir);
    }
  }

  /**
   * Follows `path` through the image: the real path it leads to and what is there. `missing` says, when
   * it is, which part was not found (`/nix/store/…-app has no bin/helo`).
   */
  async resolve(path: string): Promise<{ real: string; found: Found; missing?: string }> {
    let pending = path;
    for (let hop = 0; hop <= MAX_LINK_HOPS; hop++) {
      const parts = pending.split('/').filter((p) => p !== '' && p !== '.');
      const real: string[] = [];
      let restart: string | null = null;
      for (const [i, part] of parts.entries()) {
        if (part === '..') {
          real.pop();
          continue;
        }
        const here = `/${[...real, part].join('/')}`;
        const found = await this.#at(here);
        const last = i === parts.length - 1;
        if (found.kind === 'link') {
          restart = [absoluteTarget(found.target, `/${real.join('/')}`), ...parts.slice(i + 1)].join('/');
          break;
        }
        if (found.kind === 'unknown') return { real: here, found };
        if (found.kind === 'missing') return { real: here, found, missing: this.#missing(here) };
        if (found.kind === 'file' && !last) return { real: here, found: { kind: 'missing' }, missing: `${here} is a file, not a directory` };
        if (last) return { real: here, found };
        real.push(part);
      }
      if (restart === null) return { real: '/', found: { kind: 'directory' } };
      pending = restart;
    }
    return { real: path, found: { kind: 'link', target: pending } };
  }

  /** Names what is missing: the store path and the entry it lacks, or the path. */
  #missing(path: string): string {
    const store = /^(\/nix\/store\/[^/]+)(?:\/(.*))?$/.exec(path);
    if (!store) return `nothing provides ${path}`;
    if (!this.closure.paths.has(store[1]!)) return `${store[1]} is not in the closure`;
    return `${store[1]} has no ${store[2]}`;
  }

  /** What is at `path` (its parents being real directories), without following it if it is a link. */
  async #at(path: string): Promise<Found> {
    if (path === '/nix' || path === '/nix/store') return { kind: 'directory' };
    const store = /^(\/nix\/store\/[^/]+)(?:\/(.*))?$/.exec(path);
    if (store) {
      if (!this.closure.paths.has(store[1]!)) return { kind: 'missing' };
      let node = await this.trees.tree(store[1]!);
      for (const part of (store[2] ?? '').split('/').filter(Boolean)) {
        if (node.kind !== 'directory') return { kind: 'missing' };
        const child = node.children.get(part);
        if (!child) return { kind: 'missing' };
        node = child;
      }
      if (node.kind === 'directory') return { kind: 'directory' };
      return node.target !== undefined ? { kind: 'link', target: node.target } : { kind: 'file', executable: node.executable };
    }
    const entry = this.root.entryAt(path);
    if (entry !== undefined) return entry.kind === 'file' ? { kind: 'file', executable: (entry.mode & 0o111) !== 0 } : entry;
    // Below the top layer: the wheels' files.
    if (this.#lowerFiles === null) {
      const lower = this.lowerDirectories.some((d) => path === d || path.startsWith(`${d}/`) || d.startsWith(`${path}/`));
      return lower ? { kind: 'unknown' } : { kind: 'missing' };
    }
    if (this.#lowerFiles.has(path)) return { kind: 'file', executable: undefined };
    if (this.#lowerDirs.has(path)) return { kind: 'directory' };
    return { kind: 'missing' };
  }
}
