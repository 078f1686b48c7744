import { dirname, resolve as resolvePath } from 'node:path';
import type { ImageConfigSpec } from '../model/config.js';
import type { Closure } from '../nix/types.js';
import type { RootSpec } from '../rootfs/root-layer.js';
import { DEFAULT_PATH, type EntrypointSpec } from '../rootfs/entrypoint.js';
import { UserError } from '../util/errors.js';
import { DEFAULT_PYTHON_PREFIX, parseMode, trimSlashes } from './check.js';
import type { Recipe } from './schema.js';
import type { TrapName } from '../wheels/checks/traps.js';
import { matchStorePaths, suggestStoreName } from './store-names.js';
import { storePathName } from '../nix/store-path.js';

/** A recipe whose store-path references are expanded and whose defaults are filled in, ready to build from. */
export interface ResolvedRecipe extends Recipe {
  /** `name:tag` to record with the image, or none when the recipe has no name. */
  tags: string[];
  /** Wheel files (or directories of them) as absolute paths (the recipe's are relative to the recipe file). */
  wheels: string[];
  /** The wheel lock file as an absolute path, when the recipe names one. */
  wheelLock?: string;
  /** What the image-root layer holds. */
  root: RootSpec;
  python: { prefix: string; interpreter?: string };
  checks: { waiveRequirements: string[]; waiveLibraries: string[]; skipRequirements: boolean; skipLibraries: boolean; skipTraps: TrapName[] };
}

export { DEFAULT_PYTHON_PREFIX };
const DEFAULT_DIRECTORY_MODE = 0o755;

/** `{{name}}`: a store path by name. Names are Nix store names: letters, digits and `+ . _ ? = -`. */
const REFERENCE = /\{\{([^{}]*)\}\}/g;
const STORE_NAME = /^[A-Za-z0-9+._?=-]+$/;
/** A literal store path inside a string, up to the end of its name. */
const LITERAL_STORE_PATH = /\/nix\/store\/[0-9a-z]{32}-[A-Za-z0-9+._?=-]+/g;

/**
 * Expands `{{name}}` references against the closure, checks that literal store paths are in it, and
 * fills in defaults. `recipeFile` (when the recipe came from a file) names it in errors and anchors
 * relative wheel paths; without one they are relative to the working directory.
 */
export function resolveRecipe(recipe: Recipe, closure: Closure, recipeFile?: string): ResolvedRecipe {
  const where = recipeFile ?? 'recipe';
  const paths = [...closure.paths.keys()];
  const expand = (text: string, pointer: string): string => expandReferences(text, paths, pointer, where);
  const expandList = (list: string[] | undefined, pointer: string): string[] | undefined =>
    list?.map((item, i) => expand(item, `${pointer}/${i}`));
  const expandMap = (map: Record<string, string> | undefined, pointer: string): Record<string, string> | undefined =>
    map && Object.fromEntries(Object.entries(map).map(([k, v]) => [k, expand(v, `${pointer}/${escapePointer(k)}`)]));

  const copyToRoot = [
    ...new Set((recipe.copyToRoot ?? []).map((ref, i) => storePathOf(ref, paths, `/copyToRoot/${i}`, where))),
  ];
  const base = recipeFile ? dirname(resolvePath(recipeFile)) : process.cwd();
  const interpreter = recipe.python?.interpreter;
  const pythonPrefix = recipe.python?.prefix ?? DEFAULT_PYTHON_PREFIX;

  const resolved: ResolvedRecipe = {
    ...recipe,
    tags: recipe.name !== undefined ? [`${recipe.name}:${recipe.tag ?? 'latest'}`] : [],
    wheels: (recipe.wheels ?? []).map((wheel) => resolvePath(base, wheel)),
    ...(recipe.wheelLock !== undefined && { wheelLock: resolvePath(base, recipe.wheelLock) }),
    root: {
      copyToRoot,
      users: imageUsers(recipe),
      directories: (recipe.directories ?? []).map((d) => ({
        path: d.path.length > 1 ? d.path.replace(/\/+$/, '') : d.path,
        mode: d.mode !== undefined ? parseMode(d.mode) : DEFAULT_DIRECTORY_MODE,
      })),
      // The wheels' layers fill the prefix; the root layer must not cover it with a store path's link.
      lowerLayerDirectories: [pythonPrefix],
    },
    python: {
      prefix: pythonPrefix,
      ...(interpreter !== undefined && {
        interpreter: interpreter.includes('/') || interpreter.includes('{{')
          ? expand(interpreter, '/python/interpreter')
          : storePathOf(interpreter, paths, '/python/interpreter', where),
      }),
    },
    checks: {
      waiveRequirements: recipe.checks?.waiveRequirements ?? [],
      waiveLibraries: recipe.checks?.waiveLibraries ?? [],
      skipRequirements: recipe.checks?.skipRequirements ?? false,
      skipLibraries: recipe.checks?.skipLibraries ?? false,
      skipTraps: recipe.checks?.skipTraps ?? [],
    },
  };
  const entrypoint = expandList(recipe.entrypoint, '/entrypoint');
  const cmd = expandList(recipe.cmd, '/cmd');
  const env = expandMap(recipe.env, '/env');
  const labels = expandMap(recipe.labels, '/labels');
  if (entrypoint) resolved.entrypoint = entrypoint;
  if (cmd) resolved.cmd = cmd;
  if (env) resolved.env = env;
  if (labels) resolved.labels = labels;
  if (recipe.workingDir !== undefined) resolved.workingDir = expand(recipe.workingDir, '/workingDir');
  if (recipe.healthcheck) {
    resolved.healthcheck = { ...recipe.healthcheck, test: expandList(recipe.healthcheck.test, '/healthcheck/test')! };
  }
  const entrypointSpec = programOf(resolved, recipe.checks?.allowMissingEntrypoint === true);
  if (entrypointSpec) resolved.root.entrypoint = entrypointSpec;
  return resolved;
}

/**
 * What the container runs, as the root layer checks it: entrypoint[0], else cmd[0] (a runtime runs
 * cmd when there is no entrypoint), searched on the image's PATH (the recipe's, else the runtimes'
 * default, and the wheels' bin) when it has no `/`.
 */
function programOf(recipe: ResolvedRecipe, allowMissing: boolean): EntrypointSpec | undefined {
  const [program, key] = recipe.entrypoint?.length ? [recipe.entrypoint[0]!, 'entrypoint' as const] : recipe.cmd?.length ? [recipe.cmd[0]!, 'cmd' as const] : [];
  if (program === undefined || key === undefined) return undefined;
  const path = recipe.env?.PATH !== undefined ? recipe.env.PATH.split(':') : DEFAULT_PATH.split(':');
  return {
    program,
    key,
    path: path.filter((p) => p !== ''),
    extraPath: [`${recipe.python.prefix}/bin`],
    workingDir: recipe.workingDir ?? '/',
    volumes: recipe.volumes ?? [],
    allowMissing,
  };
}

/**
 * The recipe's users with defaults: home `/home/<name>`, shell `/bin/sh`, and the group named by the
 * recipe, else by whoever named that gid first, else after the user.
 */
function imageUsers(recipe: Recipe): RootSpec['users'] {
  const explicit = new Map<number, string>([[0, 'root']]);
  for (const user of recipe.users ?? []) if (user.group !== undefined && !explicit.has(user.gid)) explicit.set(user.gid, user.group);
  const named = new Map(explicit);
  return (recipe.users ?? []).map((user) => {
    const group = named.get(user.gid) ?? user.name;
    named.set(user.gid, group);
    return { name: user.name, uid: user.uid, gid: user.gid, group, home: trimSlashes(user.home ?? `/home/${user.name}`), shell: user.shell ?? '/bin/sh' };
  });
}

/**
 * The image config the OCI writer serialises. `envAdditions` are search paths other stages need
 * (e.g. the wheels' PYTHONPATH, the library directories for LD_LIBRARY_PATH): each is appended to the
 * recipe's value of that variable, `:`-separated, without repeating an entry already there.
 */
export function toImageConfigSpec(recipe: ResolvedRecipe, envAdditions: Record<string, string | string[]> = {}): ImageConfigSpec {
  const env = { ...recipe.env };
  for (const [name, addition] of Object.entries(envAdditions)) {
    const added = (Array.isArray(addition) ? addition : addition.split(':')).filter((p) => p !== '');
    const current = env[name] !== undefined && env[name] !== '' ? env[name].split(':') : [];
    const joined = [...current, ...added.filter((p) => !current.includes(p))];
    if (joined.length > 0) env[name] = [...new Set(joined)].join(':');
  }
  const spec: ImageConfigSpec = {
    architecture: recipe.architecture ?? 'amd64',
    os: recipe.os ?? 'linux',
    env: Object.keys(env)
      .sort()
      .map((name) => `${name}=${env[name]}`),
    exposedPorts: recipe.ports ?? [],
    volumes: recipe.volumes ?? [],
    labels: recipe.labels ?? {},
  };
  if (recipe.variant !== undefined) spec.variant = recipe.variant;
  // An empty list is how a flag clears the file's value: the config then has none.
  if (recipe.entrypoint?.length) spec.entrypoint = recipe.entrypoint;
  if (recipe.cmd?.length) spec.cmd = recipe.cmd;
  if (recipe.workingDir !== undefined) spec.workingDir = recipe.workingDir;
  if (recipe.user !== undefined) spec.user = recipe.user;
  if (recipe.stopSignal !== undefined) spec.stopSignal = recipe.stopSignal;
  if (recipe.healthcheck) {
    const { test, interval, timeout, startPeriod, retries } = recipe.healthcheck;
    spec.healthcheck = {
      test,
      ...(interval !== undefined && { interval }),
      ...(timeout !== undefined && { timeout }),
      ...(startPeriod !== undefined && { startPeriod }),
      ...(retries !== undefined && { retries }),
    };
  }
  return spec;
}

/**
 * `text` with each `{{name}}` replaced by its store path. Literal store paths must be in the closure:
 * an image whose entrypoint names a path it lacks would only fail when run.
 */
export function expandReferences(text: string, paths: readonly string[], pointer: string, where: string): string {
  const expanded = text.replace(REFERENCE, (_, name: string) => findByName(name.trim(), paths, pointer, where));
  const stray = /\{\{|\}\}/.exec(expanded.replace(LITERAL_STORE_PATH, ''));
  if (stray) throw new UserError(`${where}: ${pointer}: unbalanced '${stray[0]}' in ${JSON.stringify(text)} (a reference is {{name}})`);
  checkLiteralStorePaths(text, paths, pointer, where);
  return expanded;
}

/** A copyToRoot-style reference: a store path, a bare store path name, or `{{name}}`. */
function storePathOf(ref: string, paths: readonly string[], pointer: string, where: string): string {
  const braced = /^\{\{([^{}]*)\}\}$/.exec(ref);
  if (braced) return findByName(braced[1]!.trim(), paths, pointer, where);
  if (!ref.startsWith('/')) return findByName(ref, paths, pointer, where);
  if (!paths.includes(ref)) {
    const inside = paths.find((p) => ref.startsWith(`${p}/`));
    if (inside) throw new UserError(`${where}: ${pointer}: ${ref} is inside a store path; give the store path ${inside}`);
    throw new UserError(`${where}: ${pointer}: ${ref} is not a store path of the closure`);
  }
  return ref;
}

function findByName(name: string, paths: readonly string[], pointer: string, where: string): string {
  if (!STORE_NAME.test(name)) {
    throw new UserError(`${where}: ${pointer}: {{${name}}} is not a store path name (letters, digits and + . _ ? = -)`);
  }
  const found = matchStorePaths(paths, name);
  if (found.length === 1) return found[0]!;
  if (found.length > 1) {
    throw new UserError(`${where}: ${pointer}: '${name}' names ${found.length} store paths (${found.join(', ')}); use a full name or store path`);
  }
  const suggestion = suggestStoreName(paths, name);
  throw new UserError(
    `${where}: ${pointer}: no store path in the closure is named '${name}'${suggestion ? ` (did you mean '${suggestion}'?)` : ''}`,
  );
}

function checkLiteralStorePaths(text: string, paths: readonly string[], pointer: string, where: string): void {
  for (const match of text.matchAll(LITERAL_STORE_PATH)) {
    if (!paths.includes(match[0])) {
      const sameName = paths.filter((p) => storePathName(p) === storePathName(match[0]));
      const hint = sameName.length > 0 ? ` (the closure has ${sameName.join(', ')}; or write {{${storePathName(match[0])}}})` : '';
      throw new UserError(`${where}: ${pointer}: ${match[0]} is not in the closure${hint}`);
    }
  }
}

/** JSON pointer escaping, so error locations match what the schema errors print. */
function escapePointer(key: string): string {
  return key.replace(/~/g, '~0').replace(/\//g, '~1');
}
