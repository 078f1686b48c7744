import { COMPRESSIONS } from '../layer/format.js';
import { TRAP_NAMES, type TrapName } from '../wheels/checks/traps.js';

/**
 * The image recipe (`image.json`): what goes into the image besides the closure, and how it runs.
 * Every key is optional; flags of `build-image` override the file (see overrides.ts).
 *
 * Strings in entrypoint, cmd, env values, workingDir, labels, healthcheck.test and python.interpreter
 * may name a closure path by its name: `{{vllm-server}}` becomes `/nix/store/<hash>-vllm-server`,
 * `{{python3}}` becomes `/nix/store/<hash>-python3-3.11.9` (see resolve.ts).
 */
export interface Recipe {
  /** Editors' schema reference; ignored. */
  $schema?: string;
  /** Repository name the image is tagged with, e.g. `nix2oci/demo` (no tag). */
  name?: string;
  /** Tag for `name`; `latest` when left out. */
  tag?: string;

  entrypoint?: string[];
  cmd?: string[];
  /** Environment variables; the image config lists them sorted by name. */
  env?: Record<string, string>;
  workingDir?: string;
  /** `1000`, `1000:1000`, `app` or `app:app`; a name must be root or one of `users`. */
  user?: string;
  /** `8000/tcp`, `53/udp`, or a bare port (tcp). */
  ports?: string[];
  /** Absolute paths of volumes, e.g. `/models`. */
  volumes?: string[];
  labels?: Record<string, string>;
  /** `SIGTERM`, `SIGINT`, or a signal number. */
  stopSignal?: string;
  healthcheck?: RecipeHealthcheck;
  /** GOARCH name: amd64 (default), arm64, … */
  architecture?: Architecture;
  /** CPU variant, e.g. `v8` for arm64. */
  variant?: string;
  /** `linux` (default). */
  os?: string;

  /** Store paths linked into `/` (like nixpkgs' buildEnv): a store path, a store path name (`bash`) or `{{bash}}`. */
  copyToRoot?: string[];
  /** Users besides root (which is always present), written to /etc/passwd and /etc/group with their homes. */
  users?: RecipeUser[];
  /** Empty directories to create, e.g. mount points such as `/models`. */
  directories?: RecipeDirectory[];

  /** Most layers the image may have (store paths are grouped to fit); default 100. */
  maxLayers?: number;
  /**
   * How store paths are grouped into layers: `size-aware` (default: the largest paths anchor layers, paths
   * used by the same anchors share one) or `popularity` (nixpkgs' streamLayeredImage).
   */
  layerStrategy?: RecipeLayerStrategy;
  /** Layer compression; default gzip. */
  compression?: RecipeCompression;
  /** The compression's level: gzip 1–9 (default 6), zstd 1–19 (default 3). */
  compressionLevel?: number;
  /** No layer blob larger than this: a size such as `5G`, `500M` or `2048` (bytes); see `--max-layer-size`. */
  maxLayerSize?: string;
  /** Python wheels to install, relative to the recipe file: wheel files, or directories (every `*.whl` in them). */
  wheels?: string[];
  /**
   * A lock file of the wheels allowed, relative to the recipe file, in pip's `--require-hashes` form
   * (`name==version --hash=sha256:…`): every wheel must be pinned there with its hash, and every pin given.
   */
  wheelLock?: string;
  python?: RecipePython;
  checks?: RecipeChecks;
  /** SBOM documents to attach to the image (and write with `--sbom-dir`): `spdx`, `cyclonedx` or `both`. */
  sbom?: SbomChoice;
  /** Attach an in-toto statement with SLSA provenance v1 (the inputs by sha256, the flags, the builder). */
  provenance?: boolean;
}

/** What `--sbom` and the recipe's `sbom` take. */
export const SBOM_CHOICES = ['spdx', 'cyclonedx', 'both'] as const;
export type SbomChoice = (typeof SBOM_CHOICES)[number];

export interface RecipeHealthcheck {
  /** `["CMD", "curl", "-f", "http://localhost:8000/health"]`, `["CMD-SHELL", "curl -f …"]` or `["NONE"]`. */
  test: string[];
  /** Go durations: `30s`, `1m30s`, `500ms`. */
  interval?: string;
  timeout?: string;
  startPeriod?: string;
  retries?: number;
}

export interface RecipeUser {
  name: string;
  uid: number;
  gid: number;
  /** Group name for `gid`; defaults to the user's name. */
  group?: string;
  /** Default `/home/<name>`; created in the image. */
  home?: string;
  /** Default `/bin/sh`. */
  shell?: string;
}

export interface RecipeDirectory {
  path: string;
  /** Octal, e.g. `0755` (default) or `1777`. */
  mode?: string;
}

export interface RecipePython {
  /** Where wheels are installed: `<prefix>/lib/python3.X/site-packages`, `<prefix>/bin`. Default `/opt/python`. */
  prefix?: string;
  /**
   * The image's Python: a store path name (`python3`), a store path, or an interpreter file such as
   * `{{python3}}/bin/python3.11`. Found in the closure when left out.
   */
  interpreter?: string;
}

export interface RecipeChecks {
  /** Distribution names whose unmet requirements do not fail the build (e.g. `triton`). */
  waiveRequirements?: string[];
  /** Shared libraries (sonames) the library check does not report, e.g. ones the host mounts at run time. */
  waiveLibraries?: string[];
  /** Skip the requirements check (as `--no-requirements-check`). */
  skipRequirements?: boolean;
  /** Libraries the image lacks do not fail the build; they are warnings (as `--no-library-check`). */
  skipLibraries?: boolean;
  /**
   * Trap warnings not to give, by name: `cxx-runtime`, `amdsmi`, `c-compiler`, `python-headers`, `aiter`
   * (see src/wheels/checks/traps.ts). Each warning ends with the name that turns it off.
   */
  skipTraps?: TrapName[];
  /**
   * The program the image runs (entrypoint, else cmd) is mounted at run time: its absence from the
   * image is a warning, not an error. (One in a volume is only warned about anyway.)
   */
  allowMissingEntrypoint?: boolean;
}

export const ARCHITECTURES = ['amd64', 'arm64', 'arm', '386', 'ppc64le', 's390x', 'riscv64', 'mips64le', 'loong64'] as const;
export type Architecture = (typeof ARCHITECTURES)[number];

export { COMPRESSIONS };
export const LAYER_STRATEGIES = ['size-aware', 'popularity'] as const;
export type RecipeLayerStrategy = (typeof LAYER_STRATEGIES)[number];
export type RecipeCompression = (typeof COMPRESSIONS)[number];

/** Patterns shared by the schema and the command-line flags, so both accept the same values. */
export const Patterns = {
  envName: '^[A-Za-z_][A-Za-z0-9_]*$',
  port: '^[0-9]{1,5}(/(tcp|udp|sctp))?$',
  absolutePath: '^/[^\\u0000]*$',
  user: '^[^:\\s]+(:[^:\\s]+)?$',
  userName: '^[a-z_][a-z0-9_-]{0,31}$',
  signal: '^(SIG[A-Z0-9+-]+|[0-9]{1,2})$',
  duration: '^(0|([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$',
  mode: '^[0-7]{3,5}$',
  storePathRef: '^(/[^\\u0000]+|\\{\\{[^{}]+\\}\\}|[A-Za-z0-9+._?=-]+)$',
  imageName: '^[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*$',
  tag: '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$',
} as const;

/*
 * The JSON Schema (draft-07, as ajv 8 compiles by default). `description` on a constrained string says,
 * as a noun phrase, what is expected: load.ts prints it when a value does not match ("expected …").
 */
const string = { type: 'string' } as const;
const stringList = { type: 'array', items: string } as const;
const absolutePath = { type: 'string', pattern: Patterns.absolutePath, description: 'an absolute path' } as const;
const duration = { type: 'string', pattern: Patterns.duration, description: 'a duration such as 30s, 1m30s or 500ms' } as const;

export const recipeSchema = {
  $id: 'https://nix2oci.dev/schema/image.json',
  title: 'nix2oci image recipe',
  type: 'object',
  additionalProperties: false,
  properties: {
    $schema: string,
    name: { type: 'string', pattern: Patterns.imageName, description: 'an image name such as nix2oci/demo (lowercase, no tag)' },
    tag: { type: 'string', pattern: Patterns.tag, description: 'a tag such as latest (letters, digits, _ . -)' },
    entrypoint: stringList,
    cmd: stringList,
    env: {
      type: 'object',
      propertyNames: { pattern: Patterns.envName, description: 'a variable name (letters, digits, _)' },
      additionalProperties: string,
    },
    workingDir: absolutePath,
    user: { type: 'string', pattern: Patterns.user, description: 'a user such as 1000, 1000:1000 or app:app' },
    ports: {
      type: 'array',
      items: { type: 'string', pattern: Patterns.port, description: 'a port such as 8000/tcp, 53/udp or 8000' },
    },
    volumes: { type: 'array', items: absolutePath },
    labels: { type: 'object', additionalProperties: string },
    stopSignal: { type: 'string', pattern: Patterns.signal, description: 'a signal such as SIGTERM or a number' },
    healthcheck: {
      type: 'object',
      additionalProperties: false,
      required: ['test'],
      properties: {
        test: { type: 'array', items: string, minItems: 1 },
        interval: duration,
        timeout: duration,
        startPeriod: duration,
        retries: { type: 'integer', minimum: 0 },
      },
    },
    architecture: { type: 'string', enum: [...ARCHITECTURES] },
    variant: { type: 'string', pattern: '^v[0-9]+$', description: 'a CPU variant such as v8' },
    os: { type: 'string', pattern: '^[a-z0-9]+$', description: 'an OS name such as linux' },
    copyToRoot: {
      type: 'array',
      items: { type: 'string', pattern: Patterns.storePathRef, description: 'a store path or a store path name such as bash' },
    },
    users: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['name', 'uid', 'gid'],
        properties: {
          name: { type: 'string', pattern: Patterns.userName, description: 'a user name (lowercase letters, digits, _ -)' },
          uid: { type: 'integer', minimum: 0, maximum: 2147483647 },
          gid: { type: 'integer', minimum: 0, maximum: 2147483647 },
          group: { type: 'string', pattern: Patterns.userName, description: 'a group name (lowercase letters, digits, _ -)' },
          home: absolutePath,
          shell: absolutePath,
        },
      },
    },
    directories: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['path'],
        properties: {
          path: absolutePath,
          mode: { type: 'string', pattern: Patterns.mode, description: 'an octal mode such as 0755 or 1777' },
        },
      },
    },
    maxLayers: { type: 'integer', minimum: 2, maximum: 127 },
    layerStrategy: { type: 'string', enum: [...LAYER_STRATEGIES] },
    compression: { type: 'string', enum: [...COMPRESSIONS] },
    compressionLevel: { type: 'integer', minimum: 1, maximum: 19 },
    maxLayerSize: { type: 'string', pattern: '^[0-9]', description: 'a size such as 5G, 500M or 2048 (bytes)' },
    wheels: { type: 'array', items: { type: 'string', minLength: 1 } },
    wheelLock: { type: 'string', minLength: 1 },
    sbom: { type: 'string', enum: [...SBOM_CHOICES] },
    provenance: { type: 'boolean' },
    python: {
      type: 'object',
      additionalProperties: false,
      properties: {
        prefix: absolutePath,
        interpreter: { type: 'string', minLength: 1 },
      },
    },
    checks: {
      type: 'object',
      additionalProperties: false,
      properties: {
        waiveRequirements: stringList,
        waiveLibraries: stringList,
        skipRequirements: { type: 'boolean' },
        skipLibraries: { type: 'boolean' },
        skipTraps: { type: 'array', items: { type: 'string', enum: [...TRAP_NAMES] } },
        allowMissingEntrypoint: { type: 'boolean' },
      },
    },
  },
} as const;

/** The recipe with nothing in it: every default applies. */
export function emptyRecipe(): Recipe {
  return {};
}
