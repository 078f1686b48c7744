import { Command, Option } from 'commander';
import type { RecipeOverrides } from '../recipe/overrides.js';
import { collect } from './flags.js';

/**
 * Adds the flags that override the recipe to a command (`build-image`). Read them back with
 * `recipeOverridesFrom(command.opts())`; overrides.ts documents how each merges.
 */
export function addRecipeOptions(command: Command): Command {
  for (const [flags, description] of REPEATABLE) command.addOption(new Option(flags, description).argParser(collect));
  return command
    .option('--entrypoint <command>', 'entrypoint: a JSON list, or one program path (not split); "" for none')
    .option('--cmd <args>', 'default arguments: a JSON list, or one argument (not split); "" for none')
    .option('--workdir <dir>', 'working directory')
    .option('--user <user>', 'user to run as: 1000, 1000:1000, or a user of the recipe')
    .option('--stop-signal <signal>', 'signal that stops the container, e.g. SIGINT')
    .option('--healthcheck-cmd <command>', 'healthcheck run by the shell, or a JSON argv')
    .option('--healthcheck-interval <duration>', 'time between checks, e.g. 30s')
    .option('--healthcheck-timeout <duration>', 'time a check may take, e.g. 5s')
    .option('--healthcheck-start-period <duration>', 'start-up time during which failures do not count, e.g. 1m')
    .option('--healthcheck-retries <n>', 'failures in a row before unhealthy')
    .option('--no-healthcheck', 'turn off any healthcheck')
    .option('--arch <arch>', 'image architecture: amd64, arm64, … or a Nix system such as aarch64-linux');
}

/** The recipe flags that may be given several times, each adding to the list. */
const REPEATABLE: [string, string][] = [
  ['--env <NAME=value>', 'set an environment variable (repeatable)'],
  ['--label <KEY=value>', 'set a label (repeatable)'],
  ['--port <port>', 'expose a port, e.g. 8000/tcp (repeatable)'],
  ['--volume <path>', 'declare a volume, e.g. /models (repeatable)'],
  ['--copy-to-root <path>', 'link a store path (by path or name) into / (repeatable)'],
];

/** The flags added by `addRecipeOptions`, as commander parsed them, for `applyOverrides`. */
export function recipeOverridesFrom(opts: Record<string, unknown>): RecipeOverrides {
  const text = (key: string): string | undefined => (typeof opts[key] === 'string' ? (opts[key] as string) : undefined);
  const list = (key: string): string[] | undefined => (Array.isArray(opts[key]) ? (opts[key] as string[]) : undefined);
  const overrides: RecipeOverrides = {
    env: list('env'),
    labels: list('label'),
    entrypoint: text('entrypoint'),
    cmd: text('cmd'),
    workingDir: text('workdir'),
    user: text('user'),
    ports: list('port'),
    volumes: list('volume'),
    copyToRoot: list('copyToRoot'),
    stopSignal: text('stopSignal'),
    healthcheckCmd: text('healthcheckCmd'),
    healthcheckInterval: text('healthcheckInterval'),
    healthcheckTimeout: text('healthcheckTimeout'),
    healthcheckStartPeriod: text('healthcheckStartPeriod'),
    healthcheckRetries: text('healthcheckRetries'),
    noHealthcheck: opts.healthcheck === false,
    architecture: text('arch'),
  };
  return Object.fromEntries(Object.entries(overrides).filter(([, v]) => v !== undefined && v !== false)) as RecipeOverrides;
}
