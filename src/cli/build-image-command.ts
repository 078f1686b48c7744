import { Command, Option } from 'commander';
import { addRecipeOptions, recipeOverridesFrom } from './recipe-options.js';
import { OUTPUT_FORMATS, parseOutputFormat } from '../output/formats.js';
import type { Compression } from '../layer/types.js';
import type { PlanStrategy } from '../plan/plan.js';
import { isUserError, UserError } from '../util/errors.js';
import { describeOsError, ENVIRONMENT_CODES } from '../util/os-errors.js';
import { tmpdir } from 'node:os';
import { addPushOptions, pushOptionsFromFlags, type PushFlags } from './push-command.js';
import { defaultCacheDir } from '../cache/store.js';

const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

export function buildImageCommand(): Command {
  const command = new Command('build-image')
    .description('Build an image from nix-store --export closures (and Python wheels) and write it as an archive or OCI layout.')
    .addOption(new Option('--closure <file>', 'a nix-store --export stream; repeatable; - for stdin').argParser(collect).makeOptionMandatory())
    .option('--path-info <file>', 'JSON of `nix path-info --json --recursive`: verify each path\'s NAR hash and size')
    .option('--recipe <file>', 'image recipe (JSON), e.g. layers/demo/image.json')
    .requiredOption('-o, --output <path>', 'where to write the image; - for standard output')
    .addOption(new Option('--format <format>', 'output format').choices(OUTPUT_FORMATS).default('oci-archive'))
    .addOption(new Option('-t, --tag <name:tag>', 'name to record in the archive (repeatable); default: the recipe\'s name and tag').argParser(collect))
    .addOption(new Option('--compression <kind>', 'layer compression (default: the recipe\'s, else gzip)').choices(['gzip', 'none']))
    .option('--max-layers <n>', 'most layers the image may have (default: the recipe\'s, else 100)')
    .addOption(new Option('--layer-strategy <strategy>', 'how store paths share layers (default: the recipe\'s, else size-aware)').choices(['size-aware', 'popularity']))
    .addOption(new Option('--wheel <file>', 'a Python wheel to install (repeatable; adds to the recipe\'s)').argParser(collect))
    .option('--python <path>', 'the image\'s Python: a store path or its bin/python3.X (default: found in the closure)')
    .option('--no-deps-check', 'skip the wheels\' requirements check')
    .option('--push <ref>', 'push the built image to HOST[:PORT]/REPO[:TAG] (push options below apply)')
    .option('--cache-dir <dir>', 'the layer cache (default: $XDG_CACHE_HOME/nix2oci, else ~/.cache/nix2oci)')
    .option('--no-cache', 'build every layer afresh, leaving no cache behind')
    .option('--jobs <n>', 'layers to build at once (default: the number of CPUs); with --push also blobs to push at once (default 4)')
    .option('-q, --quiet', 'print only warnings, errors and the result')
    .option('--json', 'print a JSON summary of the build on standard output');
  addRecipeOptions(command);
  // The push flags apply to --push; build-image's own --tag and --quiet already mean the same thing there.
  for (const option of addPushOptions(new Command()).options) {
    if (option.long !== '--tag' && option.long !== '--quiet' && option.long !== '--jobs') command.addOption(option);
  }
  command.action(async (flags: Record<string, unknown>) => {
    // Loaded when run, not when the CLI starts: a warm build takes about a second, start-up counts.
    const [{ buildImage, DEFAULT_SOURCE_DATE_EPOCH }, { TerminalBuildProgress }] = await Promise.all([import('../pipeline/build-image.js'), import('./build-progress.js')]);
    const output = flags.output as string;
    const quiet = Boolean(flags.quiet) || output === '-';
    // With the image on stdout, everything else goes to stderr.
    // On a terminal, bars show the progress and the per-layer lines are left out; elsewhere, plain lines.
    const bars = !quiet && !flags.json && process.stderr.isTTY ? new TerminalBuildProgress(process.stderr) : undefined;
    const say = (line: string) => {
      if (!quiet && !bars) process.stderr.write(`${line}\n`);
    };
    const warn = (line: string) => (bars ? bars.log(`warning: ${line}`) : process.stderr.write(`warning: ${line}\n`));
    const maxLayers = flags.maxLayers !== undefined ? parseWholeNumber(flags.maxLayers as string, '--max-layers') : undefined;
    const jobs = flags.jobs !== undefined ? parseWholeNumber(flags.jobs as string, '--jobs') : undefined;
    if (flags.cache === false && flags.cacheDir !== undefined) throw new UserError('--cache-dir and --no-cache contradict each other; give one');
    const cacheDir = flags.cache === false ? null : ((flags.cacheDir as string | undefined) ?? defaultCacheDir());
    const started = Date.now();
    // An OS error without a path (a write on an open file) comes from the build's work files: name where they are.
    const workFiles = cacheDir === null ? `the build's work directory in ${tmpdir()} (TMPDIR)` : `the layer cache ${cacheDir}`;
    const result = await buildImage({
      progress: bars,
      stopProgress: () => bars?.stop(),
      closures: flags.closure as string[],
      pathInfo: flags.pathInfo as string | undefined,
      recipe: flags.recipe as string | undefined,
      overrides: recipeOverridesFrom(flags),
      wheels: (flags.wheel as string[] | undefined) ?? [],
      python: flags.python as string | undefined,
      depsCheck: flags.depsCheck !== false,
      output,
      format: parseOutputFormat(flags.format as string),
      tags: (flags.tag as string[] | undefined) ?? [],
      compression: flags.compression as Compression | undefined,
      maxLayers,
      layerStrategy: flags.layerStrategy as PlanStrategy | undefined,
      sourceDateEpoch: sourceDateEpoch(DEFAULT_SOURCE_DATE_EPOCH),
      cacheDir,
      jobs,
      log: say,
      warn: (line) => void warn(line),
    }).catch((err: unknown) => {
      const e = err as NodeJS.ErrnoException;
      if (!isUserError(err) && typeof e?.code === 'string' && ENVIRONMENT_CODES.has(e.code) && typeof e.path !== 'string') {
        throw new UserError(`cannot write ${workFiles}: ${describeOsError(err)}`, { cause: err });
      }
      throw err;
    });
    const seconds = (Date.now() - started) / 1000;
    if (flags.json) {
      process.stdout.write(
        `${JSON.stringify({
          output,
          format: flags.format,
          manifestDigest: result.manifestDigest,
          tags: result.tags,
          seconds,
          timings: result.timings,
          cache: cacheDir,
          reused: result.layers.filter((l) => l.reused).length,
          built: result.layers.filter((l) => !l.reused).length,
          layers: result.layers.map(({ blob, contents, reused, seconds }) => ({
            digest: blob.digest,
            size: blob.size,
            diffId: blob.diffId,
            uncompressedSize: blob.uncompressedSize,
            contents,
            reused,
            seconds,
          })),
        }, null, 2)}\n`,
      );
    } else if (output !== '-') {
      const done = (line: string) => {
        if (!quiet) process.stderr.write(`${line}\n`);
      };
      const reused = result.layers.filter((l) => l.reused).length;
      done(`wrote ${output} (${result.layers.length} layers, ${reused} reused, ${seconds.toFixed(1)} s), image ${result.manifestDigest}`);
      if (flags.format !== 'oci-layout') done(`load it with: podman load -i ${output}`);
    }
    if (flags.push !== undefined) {
      if (output === '-') throw new UserError('--push needs the image in a file or directory, not on standard output');
      const pushFlags = { ...flags, tag: [], quiet: flags.quiet, jobs } as unknown as PushFlags;
      // The build's own blobs are gone with its work directory: push what was written.
      const [{ pushImage }, { readImage }] = await Promise.all([import('../registry/push.js'), import('../output/read.js')]);
      await pushImage(await readImage(output), flags.push as string, pushOptionsFromFlags(pushFlags));
    }
  });
  return command;
}

/** SOURCE_DATE_EPOCH (reproducible-builds.org) sets every mtime and `created`. */
function sourceDateEpoch(fallback: number): number {
  const text = process.env.SOURCE_DATE_EPOCH;
  if (text === undefined || text === '') return fallback;
  if (!/^\d+$/.test(text)) throw new UserError(`SOURCE_DATE_EPOCH must be a whole number of seconds, got ${JSON.stringify(text)}`);
  return Number(text);
}

function parseWholeNumber(text: string, flag: string): number {
  if (!/^\d+$/.test(text)) throw new UserError(`${flag} takes a whole number, got ${JSON.stringify(text)}`);
  return Number(text);
}
