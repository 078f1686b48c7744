import { UserError } from '../util/errors.js';

/**
 * A Go-style duration: a number of nanoseconds (as Docker's JSON stores it) or text such as
 * `30s`, `1m30s`, `500ms`.
 */
export type Duration = number | string;

/** Docker's HEALTHCHECK. `test` is `['CMD', …]`, `['CMD-SHELL', 'command']` or `['NONE']`. */
export interface HealthcheckSpec {
  test: string[];
  interval?: Duration;
  timeout?: Duration;
  startPeriod?: Duration;
  retries?: number;
}

/** What the user asks of the image's runtime configuration, before it is serialised. */
export interface ImageConfigSpec {
  /** GOARCH spelling: `amd64`, `arm64`, … (see `platformOfNixSystem`). */
  architecture: string;
  os: string;
  /** CPU variant, e.g. `v8` for arm64, `v7` for arm. */
  variant?: string;
  /** `NAME=value`, in order. */
  env: string[];
  entrypoint?: string[];
  cmd?: string[];
  workingDir?: string;
  user?: string;
  /** `8000/tcp`, `53/udp`; a bare port means tcp. */
  exposedPorts: string[];
  /** Absolute paths. */
  volumes: string[];
  labels: Record<string, string>;
  stopSignal?: string;
  healthcheck?: HealthcheckSpec;
}

/** One `history` entry; writers add one per layer so `docker history` and `podman history` say where it came from. */
export interface HistoryEntry {
  createdBy?: string;
  comment?: string;
  emptyLayer?: boolean;
}

export interface BuildConfigOptions {
  created: Date;
  history?: HistoryEntry[];
}

/**
 * The image config (OCI image-spec `config.json`, which Docker reads as its own) as bytes.
 * Keys are written in a fixed order, maps sorted, no whitespace: the same spec always gives the same bytes.
 */
export function buildConfig(spec: ImageConfigSpec, diffIds: string[], options: BuildConfigOptions): Buffer {
  for (const diffId of diffIds) {
    if (!/^sha256:[0-9a-f]{64}$/.test(diffId)) throw new Error(`buildConfig: invalid diffId ${diffId}`);
  }
  const created = formatTimestamp(options.created);
  const runtime: Record<string, unknown> = {};
  if (spec.user !== undefined && spec.user !== '') runtime.User = spec.user;
  const ports = [...new Set(spec.exposedPorts.map(normalizePort))].sort();
  if (ports.length > 0) runtime.ExposedPorts = Object.fromEntries(ports.map((p) => [p, {}]));
  runtime.Env = spec.env.map(checkEnv);
  if (spec.entrypoint !== undefined) runtime.Entrypoint = checkArgv(spec.entrypoint, 'entrypoint');
  if (spec.cmd !== undefined) runtime.Cmd = checkArgv(spec.cmd, 'cmd');
  if (spec.healthcheck !== undefined) runtime.Healthcheck = healthcheckJson(spec.healthcheck);
  const volumes = [...new Set(spec.volumes.map(checkVolume))].sort();
  if (volumes.length > 0) runtime.Volumes = Object.fromEntries(volumes.map((v) => [v, {}]));
  if (spec.workingDir !== undefined && spec.workingDir !== '') runtime.WorkingDir = checkAbsolute(spec.workingDir, 'working directory');
  const labelKeys = Object.keys(spec.labels).sort();
  if (labelKeys.length > 0) runtime.Labels = Object.fromEntries(labelKeys.map((k) => [k, String(spec.labels[k])]));
  if (spec.stopSignal !== undefined && spec.stopSignal !== '') runtime.StopSignal = checkSignal(spec.stopSignal);

  const history = (options.history ?? []).map((h) => ({
    created,
    ...(h.createdBy !== undefined && { created_by: h.createdBy }),
    ...(h.comment !== undefined && { comment: h.comment }),
    ...(h.emptyLayer && { empty_layer: true }),
  }));
  const nonEmpty = (options.history ?? []).filter((h) => !h.emptyLayer).length;
  if (options.history && nonEmpty !== diffIds.length) {
    throw new Error(`buildConfig: ${nonEmpty} non-empty history entries for ${diffIds.length} layers`);
  }

  const config = {
    created,
    architecture: spec.architecture,
    ...(spec.variant !== undefined && spec.variant !== '' && { variant: spec.variant }),
    os: spec.os,
    config: runtime,
    rootfs: { type: 'layers', diff_ids: diffIds },
    ...(history.length > 0 && { history }),
  };
  return Buffer.from(JSON.stringify(config), 'utf8');
}

/**
 * RFC 3339 in UTC, whole seconds unless the date has milliseconds: `1970-01-01T00:00:01Z`,
 * as Go's time.RFC3339Nano prints it (and so Docker and podman show it).
 */
export function formatTimestamp(date: Date): string {
  if (Number.isNaN(date.getTime())) throw new UserError('the image creation time is not a valid date (check SOURCE_DATE_EPOCH)');
  return date.toISOString().replace(/\.000Z$/, 'Z');
}

/** OCI platform of a Nix system double such as `x86_64-linux`. */
export function platformOfNixSystem(system: string): { architecture: string; os: string; variant?: string } {
  const match = /^([^-]+)-(.+)$/.exec(system);
  if (!match) throw new UserError(`unknown Nix system "${system}": expected CPU-OS such as x86_64-linux`);
  const [, cpu, os] = match as unknown as [string, string, string];
  const arch: Record<string, { architecture: string; variant?: string }> = {
    x86_64: { architecture: 'amd64' },
    i686: { architecture: '386' },
    aarch64: { architecture: 'arm64', variant: 'v8' },
    armv7l: { architecture: 'arm', variant: 'v7' },
    armv6l: { architecture: 'arm', variant: 'v6' },
    riscv64: { architecture: 'riscv64' },
    powerpc64le: { architecture: 'ppc64le' },
    s390x: { architecture: 's390x' },
    mips64el: { architecture: 'mips64le' },
    loongarch64: { architecture: 'loong64' },
  };
  const found = arch[cpu];
  if (!found) throw new UserError(`Nix system "${system}" has no OCI architecture nix2oci knows`);
  return { ...found, os };
}

function normalizePort(port: string): string {
  const match = /^(\d{1,5})(?:\/(tcp|udp|sctp))?$/i.exec(port.trim());
  const number = match ? Number(match[1]) : NaN;
  if (!match || number < 1 || number > 65535) {
    throw new UserError(`invalid exposed port "${port}": expected PORT or PORT/tcp, PORT/udp, PORT/sctp with PORT 1-65535`);
  }
  return `${number}/${(match[2] ?? 'tcp').toLowerCase()}`;
}

function checkEnv(entry: string): string {
  const eq = entry.indexOf('=');
  if (eq <= 0 || /[\0]/.test(entry)) throw new UserError(`invalid environment entry "${entry}": expected NAME=value`);
  return entry;
}

function checkArgv(argv: string[], what: string): string[] {
  if (!Array.isArray(argv) || argv.some((a) => typeof a !== 'string' || a.includes('\0'))) {
    throw new UserError(`invalid ${what}: expected a list of strings without NUL bytes`);
  }
  return argv;
}

function checkVolume(path: string): string {
  return checkAbsolute(path, 'volume');
}

function checkAbsolute(path: string, what: string): string {
  if (!path.startsWith('/') || path.includes('\0')) throw new UserError(`invalid ${what} "${path}": expected an absolute path`);
  return path;
}

function checkSignal(signal: string): string {
  if (!/^(SIG[A-Z0-9+-]+|[0-9]{1,2})$/.test(signal)) {
    throw new UserError(`invalid stop signal "${signal}": expected a name such as SIGTERM or a number`);
  }
  return signal;
}

function healthcheckJson(check: HealthcheckSpec): Record<string, unknown> {
  const kind = check.test[0];
  if (kind !== 'NONE' && kind !== 'CMD' && kind !== 'CMD-SHELL') {
    throw new UserError(`invalid healthcheck test: it must start with CMD, CMD-SHELL or NONE, got ${JSON.stringify(kind ?? '')}`);
  }
  if (kind === 'CMD-SHELL' && check.test.length !== 2) {
    throw new UserError('invalid healthcheck test: CMD-SHELL takes exactly one command string');
  }
  if (kind !== 'NONE' && check.test.length < 2) throw new UserError(`invalid healthcheck test: ${kind} needs a command`);
  const json: Record<string, unknown> = { Test: checkArgv(check.test, 'healthcheck test') };
  const durations = [
    ['Interval', check.interval],
    ['Timeout', check.timeout],
    ['StartPeriod', check.startPeriod],
  ] as const;
  for (const [key, value] of durations) {
    if (value !== undefined) {
      const ns = parseDuration(value, `healthcheck ${key.toLowerCase()}`);
      if (ns > 0) json[key] = ns;
    }
  }
  if (check.retries !== undefined) {
    if (!Number.isInteger(check.retries) || check.retries < 0) {
      throw new UserError(`invalid healthcheck retries ${check.retries}: expected a whole number`);
    }
    if (check.retries > 0) json.Retries = check.retries;
  }
  return json;
}

const DURATION_UNITS: Record<string, number> = { ns: 1, us: 1e3, µs: 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };

/** Nanoseconds of a Duration (`1m30s` → 90000000000). */
export function parseDuration(value: Duration, what = 'duration'): number {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0) throw new UserError(`invalid ${what} ${value}: expected whole nanoseconds`);
    return value;
  }
  const text = value.trim();
  if (text === '0') return 0;
  const part = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/y;
  let total = 0;
  let at = 0;
  while (at < text.length) {
    part.lastIndex = at;
    const match = part.exec(text);
    if (!match) throw new UserError(`invalid ${what} "${value}": expected e.g. 30s, 1m30s, 500ms`);
    total += Number(match[1]) * DURATION_UNITS[match[2]!]!;
    at = part.lastIndex;
  }
  if (text.length === 0) throw new UserError(`invalid ${what} "": expected e.g. 30s`);
  return Math.round(total);
}
