import { platformOfNixSystem } from '../model/config.js';
import { UserError } from '../util/errors.js';
import { checkRecipe } from './check.js';
import { ARCHITECTURES, Patterns, type Architecture, type Recipe, type RecipeHealthcheck } from './schema.js';

/**
 * `build-image` flag values as the command line gives them: strings, and lists for repeatable flags.
 *
 * Merging over the recipe file:
 * - `env`, `labels` (`K=V`, repeatable): merged per key, the flag wins.
 * - `ports`, `volumes`, `copyToRoot` (repeatable): added to the file's, duplicates dropped.
 * - `entrypoint`, `cmd`: replace the file's. A value starting with `[` is a JSON list of strings
 *   (`'["python3","-m","http.server"]'`); any other value is ONE argument, never split on spaces
 *   (`--entrypoint /bin/server` → `["/bin/server"]`), as `docker run --entrypoint` takes it.
 *   An empty string clears it (`--entrypoint ''` → no entrypoint).
 * - `workingDir`, `user`, `stopSignal`, `architecture`: replace. `architecture` also takes a Nix
 *   system such as `aarch64-linux` (→ arm64, variant v8).
 * - Healthcheck: `healthcheckCmd` replaces the test; a plain string is run by the shell
 *   (`CMD-SHELL`), a JSON list is an argv (`CMD` is put in front unless it starts with CMD,
 *   CMD-SHELL or NONE). Interval, timeout, start period and retries replace the file's one by one
 *   and need a healthcheck (from the file or `healthcheckCmd`). `noHealthcheck` sets `NONE`,
 *   which also turns off a base's check.
 */
export interface RecipeOverrides {
  env?: string[];
  labels?: string[];
  entrypoint?: string;
  cmd?: string;
  workingDir?: string;
  user?: string;
  ports?: string[];
  volumes?: string[];
  copyToRoot?: string[];
  stopSignal?: string;
  healthcheckCmd?: string;
  healthcheckInterval?: string;
  healthcheckTimeout?: string;
  healthcheckStartPeriod?: string;
  healthcheckRetries?: string | number;
  noHealthcheck?: boolean;
  architecture?: string;
}

/** A recipe fragment to lay over another: like Recipe, but a healthcheck may change single fields. */
export type RecipePatch = Omit<Recipe, 'healthcheck'> & { healthcheck?: Partial<RecipeHealthcheck> };

/** The recipe with the flags applied; checked again as a whole (e.g. `--user app` needs the user `app`). */
export function applyOverrides(recipe: Recipe, overrides: RecipeOverrides): Recipe {
  const merged = mergeRecipe(recipe, overridesToPatch(overrides));
  checkRecipe(merged, 'recipe with command-line overrides');
  return merged;
}

/** Flag values → a recipe patch, each value checked; errors name the flag. */
export function overridesToPatch(o: RecipeOverrides): RecipePatch {
  const patch: RecipePatch = {};
  if (o.env?.length) patch.env = keyValues(o.env, '--env', new RegExp(Patterns.envName), 'NAME=value');
  if (o.labels?.length) patch.labels = keyValues(o.labels, '--label', /^[^\s=]/, 'KEY=value');
  if (o.entrypoint !== undefined) patch.entrypoint = argv(o.entrypoint, '--entrypoint');
  if (o.cmd !== undefined) patch.cmd = argv(o.cmd, '--cmd');
  if (o.workingDir !== undefined) patch.workingDir = matching(o.workingDir, '--workdir', Patterns.absolutePath, 'an absolute path');
  if (o.user !== undefined) patch.user = matching(o.user, '--user', Patterns.user, 'a user such as 1000, 1000:1000 or app');
  if (o.ports?.length) {
    patch.ports = o.ports.map((p) => {
      const port = matching(p.trim().toLowerCase(), '--port', Patterns.port, 'PORT or PORT/tcp, PORT/udp, PORT/sctp');
      const number = Number(port.split('/')[0]);
      if (number < 1 || number > 65535) throw new UserError(`--port ${p}: port ${number} is outside 1-65535`);
      return port;
    });
  }
  if (o.volumes?.length) patch.volumes = o.volumes.map((v) => matching(v, '--volume', Patterns.absolutePath, 'an absolute path'));
  if (o.copyToRoot?.length) {
    patch.copyToRoot = o.copyToRoot.map((c) => matching(c, '--copy-to-root', Patterns.storePathRef, 'a store path or a store path name'));
  }
  if (o.stopSignal !== undefined) patch.stopSignal = signal(o.stopSignal);
  if (o.architecture !== undefined) Object.assign(patch, platform(o.architecture));

  const health: Partial<RecipeHealthcheck> = {};
  if (o.healthcheckCmd !== undefined) health.test = healthcheckTest(o.healthcheckCmd);
  if (o.healthcheckInterval !== undefined) health.interval = duration(o.healthcheckInterval, '--healthcheck-interval');
  if (o.healthcheckTimeout !== undefined) health.timeout = duration(o.healthcheckTimeout, '--healthcheck-timeout');
  if (o.healthcheckStartPeriod !== undefined) health.startPeriod = duration(o.healthcheckStartPeriod, '--healthcheck-start-period');
  if (o.healthcheckRetries !== undefined) health.retries = retries(o.healthcheckRetries);
  if (o.noHealthcheck) {
    if (o.healthcheckCmd !== undefined) throw new UserError('--no-healthcheck and --healthcheck-cmd contradict each other');
    // NONE with timings is meaningless; drop them so the check passes.
    patch.healthcheck = { test: ['NONE'] };
  } else if (Object.keys(health).length > 0) {
    patch.healthcheck = health;
  }
  return patch;
}

/** `over` laid on `base`: maps merge per key, ports/volumes/copyToRoot/wheels/users/directories add, the rest replaces. */
export function mergeRecipe(base: Recipe, over: RecipePatch): Recipe {
  const merged: Recipe = { ...base };
  for (const [key, value] of Object.entries(over) as [keyof RecipePatch, unknown][]) {
    if (value === undefined) continue;
    switch (key) {
      case 'env':
      case 'labels':
        merged[key] = { ...base[key], ...(value as Record<string, string>) };
        break;
      case 'ports':
      case 'volumes':
      case 'copyToRoot':
      case 'wheels':
        merged[key] = [...new Set([...(base[key] ?? []), ...(value as string[])])];
        break;
      case 'users':
        merged.users = [...(base.users ?? []), ...(value as NonNullable<Recipe['users']>)];
        break;
      case 'directories':
        merged.directories = [...(base.directories ?? []), ...(value as NonNullable<Recipe['directories']>)];
        break;
      case 'architecture':
        merged.architecture = value as Architecture;
        // A variant belongs to its architecture: a new architecture without one drops the old.
        if (over.variant === undefined) delete merged.variant;
        break;
      case 'healthcheck':
        merged.healthcheck = mergeHealthcheck(base.healthcheck, value as Partial<RecipeHealthcheck>);
        break;
      case 'python':
      case 'checks':
        merged[key] = { ...base[key], ...(value as object) };
        break;
      default:
        (merged as Record<string, unknown>)[key] = value;
    }
  }
  return merged;
}

function mergeHealthcheck(base: RecipeHealthcheck | undefined, over: Partial<RecipeHealthcheck>): RecipeHealthcheck {
  if (over.test?.[0] === 'NONE') return { test: ['NONE'] };
  const test = over.test ?? base?.test;
  if (test === undefined) {
    throw new UserError('--healthcheck-interval, --healthcheck-timeout, --healthcheck-start-period and --healthcheck-retries need a healthcheck: give --healthcheck-cmd or set healthcheck in the recipe');
  }
  const merged: RecipeHealthcheck = { ...base, ...over, test };
  return merged;
}

function keyValues(items: string[], flag: string, keyPattern: RegExp, shape: string): Record<string, string> {
  const result: Record<string, string> = {};
  for (const item of items) {
    const eq = item.indexOf('=');
    const key = eq > 0 ? item.slice(0, eq) : '';
    if (!keyPattern.test(key)) throw new UserError(`${flag} ${item}: expected ${shape}`);
    result[key] = item.slice(eq + 1);
  }
  return result;
}

function argv(value: string, flag: string): string[] {
  if (value === '') return [];
  if (!value.trimStart().startsWith('[')) return [value];
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch {
    throw new UserError(`${flag} ${value}: not a JSON list of strings (a value starting with [ is read as JSON)`);
  }
  if (!Array.isArray(parsed) || parsed.some((a) => typeof a !== 'string')) {
    throw new UserError(`${flag} ${value}: expected a JSON list of strings such as ["python3","-m","app"]`);
  }
  return parsed as string[];
}

function matching(value: string, flag: string, pattern: string, expected: string): string {
  if (!new RegExp(pattern).test(value)) throw new UserError(`${flag} ${value}: expected ${expected}`);
  return value;
}

function signal(value: string): string {
  const upper = value.trim().toUpperCase();
  // TERM and SIGTERM both name it; the config stores the SIG form.
  const named = /^[A-Z][A-Z0-9+-]*$/.test(upper) && !upper.startsWith('SIG') ? `SIG${upper}` : upper;
  return matching(named, '--stop-signal', Patterns.signal, 'a signal such as SIGTERM or a number');
}

function platform(value: string): { architecture: Architecture; os?: string; variant?: string } {
  if ((ARCHITECTURES as readonly string[]).includes(value)) return { architecture: value as Architecture };
  if (value.includes('-')) {
    let mapped: { architecture: string; os: string; variant?: string };
    try {
      mapped = platformOfNixSystem(value);
    } catch {
      mapped = { architecture: '', os: '' };
    }
    if ((ARCHITECTURES as readonly string[]).includes(mapped.architecture)) {
      return { ...mapped, architecture: mapped.architecture as Architecture };
    }
  }
  throw new UserError(`--arch ${value}: expected one of ${ARCHITECTURES.join(', ')} or a Nix system such as x86_64-linux`);
}

function healthcheckTest(value: string): string[] {
  if (value.trim() === '') throw new UserError('--healthcheck-cmd: the command is empty (use --no-healthcheck to turn checks off)');
  if (!value.trimStart().startsWith('[')) return ['CMD-SHELL', value];
  const list = argv(value, '--healthcheck-cmd');
  if (list.length === 0) throw new UserError('--healthcheck-cmd []: the command is empty');
  return ['CMD', 'CMD-SHELL', 'NONE'].includes(list[0]!) ? list : ['CMD', ...list];
}

function duration(value: string, flag: string): string {
  return matching(value.trim(), flag, Patterns.duration, 'a duration such as 30s, 1m30s or 500ms');
}

function retries(value: string | number): number {
  const number = typeof value === 'number' ? value : /^\s*[0-9]+\s*$/.test(value) ? Number(value) : NaN;
  if (!Number.isSafeInteger(number) || number < 0) throw new UserError(`--healthcheck-retries ${value}: expected a whole number`);
  return number;
}
