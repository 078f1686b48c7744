import { statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { Command, Option } from 'commander';
import { addRecipeOptions, recipeOverridesFrom } from './recipe-options.js';
import { OUTPUT_FORMATS, parseOutputFormat } from '../model/formats.js';
import { COMPRESSIONS, type Compression } from '../layer/format.js';
import type { PlanStrategy } from '../plan/plan.js';
import { isUserError, UserError } from '../util/errors.js';
import { describeOsError, ENVIRONMENT_CODES } from '../util/os-errors.js';
import { tmpdir } from 'node:os';
import { collect, sizeFlag, wholeNumberFlag } from './flags.js';
import { addPushOptions, pushOptionsFromFlags, type PushFlags } from './push-command.js';
import { defaultCacheDir } from '../cache/store.js';
import { SBOM_CHOICES, type SbomChoice } from '../recipe/schema.js';
import { DEFAULT_CACHE_TAG } from '../registry/cache-index.js';
import { formatReference, parseReference, type ImageReference } from '../model/reference.js';
import type { RegistryCacheOptions } from '../pipeline/registry-cache.js';


export function buildImageCommand(): Command {
  const command = new Command('build-image')
    .description('Build an image from nix-store --export closures (and Python wheels) and write it as an archive or OCI layout.')
    .addOption(new Option('--closure <file>', 'a nix-store --export stream; repeatable; - for stdin').argParser(collect).makeOptionMandatory())
    .option('--path-info <file>', 'JSON of `nix path-info --json --recursive`: verify each path\'s NAR hash and size')
    .option('--recipe <file>', 'image recipe (JSON), e.g. layers/demo/image.json')
    .option('-o, --output <path>', 'where to write the image; - for standard output (optional with --push)')
    .addOption(new Option('--format <format>', 'output format').choices(OUTPUT_FORMATS).default('oci-archive'))
    .addOption(new Option('-t, --tag <name:tag>', 'name to record in the archive (repeatable); default: the recipe\'s name and tag').argParser(collect))
    .addOption(new Option('--compression <kind>', 'layer compression (default: the recipe\'s, else gzip)').choices(COMPRESSIONS))
    .option('--compression-level <n>', 'the compression\'s level: gzip 1-9 (default 6), zstd 1-19 (default 3)')
    .option('--max-layer-size <size>', 'no layer blob larger than SIZE, e.g. 5G (large store paths are split across layers; default: the recipe\'s, else none)')
    .option('--max-layers <n>', 'most layers the image may have (default: the recipe\'s, else 100)')
    .addOption(new Option('--layer-strategy <strategy>', 'how store paths share layers (default: the recipe\'s, else size-aware)').choices(['size-aware', 'popularity']))
    .addOption(new Option('--wheel <file...>', 'Python wheels to install: files, or directories (every *.whl in each); repeatable; adds to the recipe\'s'))
    .option('--wheel-lock <file>', 'only these wheels, with these hashes: a lock in pip\'s --require-hashes form (name==version --hash=sha256:…)')
    .option('--python <path>', 'the image\'s Python: a store path or its bin/python3.X (default: found in the closure)')
    .option('--wheel-split-size <size>', 'wheel files of at least SIZE get a layer of their own (default 256M)')
    .option('--no-requirements-check', 'skip the wheels\' requirements check (their Requires-Dist)')
    .option('--no-deps-check', 'the same as --no-requirements-check')
    .option('--no-library-check', 'do not fail on shared libraries the image lacks (they are listed as warnings)')
    .option('--problems <file>', 'write every problem the wheel checks find to this file (also when they fail the build)')
    .addOption(new Option('--sbom <format>', 'attach an SBOM made from what the build knows: spdx, cyclonedx or both (default: the recipe\'s sbom)').choices(SBOM_CHOICES))
    .option('--provenance', 'attach SLSA provenance v1 (an in-toto statement: inputs by sha256, flags, builder)')
    .option('--sbom-dir <dir>', 'also write the SBOM and provenance documents into DIR (sbom.spdx.json, sbom.cdx.json, provenance.intoto.json)')
    .option('--push <ref>', 'push the built image to HOST[:PORT]/REPO[:TAG] (push options below apply)')
    .option('--cache-dir <dir>', 'the layer cache (default: $XDG_CACHE_HOME/nix2oci, else ~/.cache/nix2oci)')
    .option('--no-cache', 'build every layer afresh, leaving no cache behind')
    .option('--cache-from <ref>', `read the registry cache index HOST[:PORT]/REPO[:TAG] (tag default ${DEFAULT_CACHE_TAG}): layers the registry holds are neither built nor uploaded (default with --push: the pushed repository's)`)
    .option('--cache-to <ref>', `merge this build's layers into the registry cache index HOST[:PORT]/REPO[:TAG] after the push (default with --push: the pushed repository's)`)
    .option('--no-registry-cache', 'with --push, neither read nor write the registry cache index')
    .option('--verify-registry-cache', 'download each layer taken from the registry cache once and check its digest and diffID')
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
    const output = (flags.output as string | undefined) ?? null;
    if (output === null && flags.push === undefined) throw new UserError('build-image needs --output PATH, --push REF, or both');
    if (output === '-' && flags.push !== undefined) throw new UserError('--push cannot be combined with --output - (standard output)');
    const quiet = Boolean(flags.quiet) || output === '-';
    // With the image on stdout, everything else goes to stderr.
    // On a terminal, bars show the progress and the per-layer lines are left out; elsewhere, plain lines.
    const bars = !quiet && !flags.json && process.stderr.isTTY ? new TerminalBuildProgress(process.stderr) : undefined;
    const say = (line: string) => {
      if (!quiet && !bars) process.stderr.write(`${line}\n`);
    };
    const warn = (line: string) => (bars ? bars.log(`warning: ${line}`) : process.stderr.write(`warning: ${line}\n`));
    const maxLayers = flags.maxLayers !== undefined ? wholeNumberFlag(flags.maxLayers as string, '--max-layers') : undefined;
    const jobs = flags.jobs !== undefined ? wholeNumberFlag(flags.jobs as string, '--jobs') : undefined;
    if (flags.cache === false && flags.cacheDir !== undefined) throw new UserError('--cache-dir and --no-cache contradict each other; give one');
    const cacheDir = flags.cache === false ? null : ((flags.cacheDir as string | undefined) ?? defaultCacheDir());
    const registryCache = registryCacheFrom(flags);
    const started = Date.now();
    // An OS error without a path (a write on an open file) comes from the build's work files: name where they are.
    const workFiles = cacheDir === null ? `the build's work directory in ${tmpdir()} (TMPDIR)` : `the layer cache ${cacheDir}`;
    const result = await buildImage({
      progress: bars,
      closures: flags.closure as string[],
      pathInfo: flags.pathInfo as string | undefined,
      recipe: flags.recipe as string | undefined,
      overrides: recipeOverridesFrom(flags),
      wheels: (flags.wheel as string[] | undefined) ?? [],
      python: flags.python as string | undefined,
      wheelSplitSize: flags.wheelSplitSize !== undefined ? sizeFlag(flags.wheelSplitSize as string, '--wheel-split-size', { zero: false }) : undefined,
      ...(flags.wheelLock !== undefined && { wheelLock: flags.wheelLock as string }),
      depsCheck: flags.depsCheck !== false && flags.requirementsCheck !== false,
      libraryCheck: flags.libraryCheck !== false,
      ...(flags.problems !== undefined && { problemsFile: checkOutputFile(flags.problems as string, '--problems') }),
      output,
      format: parseOutputFormat(flags.format as string),
      tags: (flags.tag as string[] | undefined) ?? [],
      compression: flags.compression as Compression | undefined,
      ...(flags.compressionLevel !== undefined && { compressionLevel: wholeNumberFlag(flags.compressionLevel as string, '--compression-level') }),
      ...(flags.maxLayerSize !== undefined && { maxLayerSize: sizeFlag(flags.maxLayerSize as string, '--max-layer-size', { zero: false }) }),
      maxLayers,
      layerStrategy: flags.layerStrategy as PlanStrategy | undefined,
      sourceDateEpoch: sourceDateEpoch(DEFAULT_SOURCE_DATE_EPOCH),
      cacheDir,
      jobs,
      ...(flags.sbom !== undefined && { sbom: flags.sbom as SbomChoice }),
      ...(flags.provenance === true && { provenance: true }),
      ...(flags.sbomDir !== undefined && { sbomDir: checkDirectory(flags.sbomDir as string, '--sbom-dir') }),
      ...(registryCache.options && { registryCache: registryCache.options }),
      log: say,
      warn: (line) => void warn(line),
    }).catch((err: unknown) => {
      // A build the checks stopped still gives its problems to a reader of --json.
      if (flags.json && output !== '-' && err instanceof Error && 'problems' in err) {
        process.stdout.write(`${JSON.stringify({ output, error: err.message, problems: err.problems }, null, 2)}\n`);
      }
      const e = err as NodeJS.ErrnoException;
      if (!isUserError(err) && typeof e?.code === 'string' && ENVIRONMENT_CODES.has(e.code) && typeof e.path !== 'string') {
        throw new UserError(`cannot write ${workFiles}: ${describeOsError(err)}`, { cause: err });
      }
      throw err;
    });
    const seconds = (Date.now() - started) / 1000;
    // With --push, --json waits for the push: standard output is then one JSON document, the pushed reference in it.
    const printSummary = (pushed: string | null) =>
      process.stdout.write(
        `${JSON.stringify({
          output,
          ...(pushed !== null && { pushed }),
          format: flags.format,
          manifestDigest: result.manifestDigest,
          tags: result.tags,
          seconds,
          timings: result.timings,
          cache: cacheDir,
          problems: result.problems,
          attachments: (result.image.attachments ?? []).map((a) => ({ artifactType: a.artifactType, digest: a.descriptor.digest })),
          reused: result.layers.filter((l) => l.reused).length,
          built: result.layers.filter((l) => !l.reused).length,
          registryCache: registryCache.options ? { from: flags.cacheFrom ?? registryCache.implied, to: registryCache.to && formatReference(registryCache.to, registryCache.to.tag), hits: result.layers.filter((l) => l.from === 'registry').length } : null,
          layers: result.layers.map(({ layer, reused, from, seconds }) => ({
            digest: layer.descriptor.digest,
            size: layer.descriptor.size,
            diffId: layer.diffId,
            uncompressedSize: layer.uncompressedSize,
            contents: layer.contents,
            reused,
            from,
            seconds,
          })),
        }, null, 2)}\n`,
      );
    if (flags.json && flags.push === undefined) {
      printSummary(null);
    } else if (!flags.json && output !== '-' && output !== null) {
      const done = (line: string) => {
        if (!quiet) process.stderr.write(`${line}\n`);
      };
      const reused = result.layers.filter((l) => l.reused).length;
      done(`wrote ${output} (${result.layers.length} layers, ${reused} reused, ${seconds.toFixed(1)} s), image ${result.manifestDigest}`);
      if (flags.format !== 'oci-layout') done(`load it with: podman load -i ${output}`);
    }
    try {
      if (flags.push !== undefined) {
        const pushFlags = { ...flags, tag: [], quiet: flags.quiet, jobs } as unknown as PushFlags;
        // The built image's layers are still where the build left them: nothing is written and read back.
        const { pushAndShow } = await import('./push-progress.js');
        const pushOptions = pushOptionsFromFlags(pushFlags);
        const pushed = await pushAndShow(result.image, flags.push as string, { ...pushOptions, ...(flags.json === true && { stdout: null }) });
        // After the image: the index names its blobs. A failure here costs only cache misses later.
        const from = registryCache.options?.from;
        const sameIndex = from && registryCache.to && formatReference(from, from.tag) === formatReference(registryCache.to, registryCache.to.tag);
        if (registryCache.to && sameIndex && result.cacheIndexHeld) {
          // Read moments ago with every entry this build has: a fresh runner with nothing changed writes nothing.
          say(`registry cache ${formatReference(registryCache.to, registryCache.to.tag)}: already holds this image's ${result.cacheEntries.size} layers`);
        } else if (registryCache.to) {
          const { pushCacheIndex } = await import('../pipeline/registry-cache.js');
          await pushCacheIndex(registryCache.to, result.cacheEntries, pushOptions, say).catch((err: unknown) => {
            if (!isUserError(err)) throw err;
            warn(`the registry cache index was not updated: ${err.message}`);
          });
        }
        if (flags.json) printSummary(pushed.reference);
      }
    } finally {
      await result.saved;
      result.dispose();
    }
  });
  return command;
}

/**
 * The registry cache from the flags: `--cache-from`/`--cache-to` as given, both the pushed repository's
 * `nix2oci-cache` tag with `--push` unless `--no-registry-cache`.
 */
function registryCacheFrom(flags: Record<string, unknown>): { options?: RegistryCacheOptions; to: ImageReference | null; implied?: string } {
  const push = flags.push === undefined ? null : parseReference(flags.push as string);
  const off = flags.registryCache === false;
  if (off && (flags.cacheFrom !== undefined || flags.cacheTo !== undefined)) {
    throw new UserError('--no-registry-cache contradicts --cache-from and --cache-to; give one');
  }
  if (flags.cacheTo !== undefined && !push) throw new UserError('--cache-to needs --push: the index names the pushed image\'s blobs');
  const implied = push && !off ? formatReference(push, DEFAULT_CACHE_TAG) : undefined;
  const from = flags.cacheFrom !== undefined ? cacheReference(flags.cacheFrom as string, '--cache-from') : implied ? cacheReference(implied, '--push') : null;
  const to = flags.cacheTo !== undefined ? cacheReference(flags.cacheTo as string, '--cache-to') : implied ? cacheReference(implied, '--push') : null;
  if (from && push && from.registry !== push.registry) {
    throw new UserError(`--cache-from ${formatReference(from, from.tag)} must be on the registry the image goes to (${push.registry})`);
  }
  if (!from) {
    if (flags.verifyRegistryCache) throw new UserError('--verify-registry-cache needs --cache-from or --push');
    return { to };
  }
  const options: RegistryCacheOptions = {
    from,
    target: push,
    mountFrom: (flags.mountFrom as string[] | undefined) ?? [],
    verify: Boolean(flags.verifyRegistryCache),
    creds: flags.creds as string | undefined,
    authfile: flags.authfile as string | undefined,
    certDir: flags.certDir as string | undefined,
    tlsVerify: flags.tlsVerify as boolean | undefined,
    retries: flags.retries as number | undefined,
  };
  return { options, to, implied };
}

/** A registry cache index's reference: a tag (default nix2oci-cache), never a digest. */
function cacheReference(text: string, flag: string): ImageReference {
  const ref = parseReference(text);
  if (ref.digest) throw new UserError(`${flag} ${text}: a registry cache is named by a tag, not a digest`);
  return { ...ref, tag: ref.tag ?? DEFAULT_CACHE_TAG };
}

/** SOURCE_DATE_EPOCH (reproducible-builds.org) sets every mtime and `created`. */
function sourceDateEpoch(fallback: number): number {
  const text = process.env.SOURCE_DATE_EPOCH;
  if (text === undefined || text === '') return fallback;
  if (!/^\d+$/.test(text)) throw new UserError(`SOURCE_DATE_EPOCH must be a whole number of seconds, got ${JSON.stringify(text)}`);
  return Number(text);
}


/** A directory the build will write into: it must exist (told before building). */
function checkDirectory(path: string, flag: string): string {
  if (!statSync(path, { throwIfNoEntry: false })?.isDirectory()) throw new UserError(`${flag} ${path}: no such directory`);
  return path;
}

/** A file the build will write: its directory must exist and it must not be a directory (told before building). */
function checkOutputFile(path: string, flag: string): string {
  const parent = statSync(dirname(resolve(path)), { throwIfNoEntry: false });
  if (!parent?.isDirectory()) throw new UserError(`${flag} ${path}: directory ${dirname(resolve(path))} does not exist`);
  if (statSync(path, { throwIfNoEntry: false })?.isDirectory()) throw new UserError(`${flag} ${path}: is a directory`);
  return path;
}

