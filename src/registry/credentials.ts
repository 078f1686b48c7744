import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { UserError } from '../util/errors.js';
import { DOCKER_HUB } from '../model/reference.js';

/**
 * Where a push's credentials come from, in the order podman and skopeo look:
 * `--creds`; then `--authfile` or `REGISTRY_AUTH_FILE` alone when given; otherwise podman's
 * `auth.json` (`$XDG_RUNTIME_DIR/containers`, `~/.config/containers`) and docker's `config.json`.
 * In each file: `credHelpers[registry]`, then `auths` (most specific `registry/namespace` key first),
 * then `credsStore`. Helpers run as `docker-credential-<name> get`.
 */
export type Credentials =
  | { kind: 'basic'; username: string; password: string; source: string }
  /** An OAuth2 refresh token (docker's `identitytoken`, or a helper's `<token>` user). */
  | { kind: 'identity-token'; token: string; source: string };

export interface CredentialOptions {
  /** `USER:PASSWORD` from `--creds`. */
  creds?: string;
  /** `--authfile`. */
  authfile?: string;
  /** Environment to read HOME, XDG_*, DOCKER_CONFIG, REGISTRY_AUTH_FILE and PATH from (default process.env). */
  env?: NodeJS.ProcessEnv;
}

/** The secret strings of some credentials (and the Basic header's encoding of them), for scrubbing output. */
export function credentialSecrets(credentials: Credentials | undefined): string[] {
  if (!credentials) return [];
  if (credentials.kind === 'identity-token') return [credentials.token];
  // The Basic header's base64 of `user:password` does not contain the password's own base64: both are listed.
  return [credentials.password, `${credentials.username}:${credentials.password}`];
}

export async function findCredentials(
  registry: string,
  repository: string,
  options: CredentialOptions = {},
): Promise<Credentials | undefined> {
  if (options.creds !== undefined) return parseCredsFlag(options.creds);
  const env = options.env ?? process.env;
  const { files, userSpecified } = authFiles(options.authfile, env);
  for (const file of files) {
    const config = await readAuthFile(file, userSpecified);
    if (!config) continue;
    const found = await credentialsInFile(config, file, registry, repository, env);
    if (found) return found;
  }
  return undefined;
}

export function parseCredsFlag(creds: string): Credentials {
  const colon = creds.indexOf(':');
  if (colon <= 0) throw new UserError('--creds needs USER:PASSWORD');
  return { kind: 'basic', username: creds.slice(0, colon), password: creds.slice(colon + 1), source: '--creds' };
}

/** The auth files to consult, in order; a user-specified one (flag or REGISTRY_AUTH_FILE) is the only one. */
export function authFiles(authfile: string | undefined, env: NodeJS.ProcessEnv): { files: string[]; userSpecified: boolean } {
  const specified = authfile ?? env.REGISTRY_AUTH_FILE;
  if (specified) return { files: [specified], userSpecified: true };
  const home = env.HOME || homedir();
  const runtimeDir = env.XDG_RUNTIME_DIR || (process.getuid ? `/run/containers/${process.getuid()}` : undefined);
  const files = [
    runtimeDir && join(runtimeDir, 'containers', 'auth.json'),
    join(env.XDG_CONFIG_HOME || join(home, '.config'), 'containers', 'auth.json'),
    join(env.DOCKER_CONFIG || join(home, '.docker'), 'config.json'),
  ].filter((f): f is string => Boolean(f));
  // XDG_RUNTIME_DIR unset gives podman's root default, /run/containers/<uid>/auth.json; no duplicates.
  return { files: [...new Set(files)], userSpecified: false };
}

interface AuthEntry {
  auth?: string;
  username?: string;
  password?: string;
  identitytoken?: string;
}

interface AuthConfig {
  auths?: Record<string, AuthEntry>;
  credHelpers?: Record<string, string>;
  credsStore?: string;
}

async function readAuthFile(file: string, mustExist: boolean): Promise<AuthConfig | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (!mustExist && (code === 'ENOENT' || code === 'ENOTDIR')) return undefined;
    throw new UserError(`cannot read auth file ${file}: ${code ?? (err as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    // JSON.parse's message names the byte position; it never echoes the file's contents beyond a token.
    throw new UserError(`auth file ${file} is not valid JSON (${positionOf(err)})`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new UserError(`auth file ${file} must hold a JSON object with "auths"`);
  }
  return parsed as AuthConfig;
}

function positionOf(err: unknown): string {
  const match = /position (\d+)/.exec((err as Error).message);
  return match ? `at byte offset ${match[1]}` : 'unexpected end or token';
}

async function credentialsInFile(
  config: AuthConfig,
  file: string,
  registry: string,
  repository: string,
  env: NodeJS.ProcessEnv,
): Promise<Credentials | undefined> {
  const helper = lookup(config.credHelpers, registry);
  if (typeof helper === 'string' && helper !== '') return runCredentialHelper(helper, registry, env, file);

  const scopes = [...namespaceKeys(registry, repository), registry];
  for (const scope of scopes) {
    const entry = lookup(config.auths, scope);
    if (entry && typeof entry === 'object') {
      const found = entryCredentials(entry, file, scope);
      if (found) return found;
    }
  }

  if (typeof config.credsStore === 'string' && config.credsStore !== '') {
    return runCredentialHelper(config.credsStore, registry, env, file);
  }
  return undefined;
}

/** `registry/a/b/c`, `registry/a/b`, `registry/a`: podman's auth.json may key by namespace. */
function namespaceKeys(registry: string, repository: string): string[] {
  const parts = repository.split('/');
  const keys: string[] = [];
  for (let n = parts.length; n > 0; n--) keys.push(`${registry}/${parts.slice(0, n).join('/')}`);
  return keys;
}

/** Finds a key in a map keyed the docker way (`https://index.docker.io/v1/`, `http://host:5000`) or the podman way. */
function lookup<T>(map: Record<string, T> | undefined, key: string): T | undefined {
  if (!map || typeof map !== 'object') return undefined;
  if (Object.hasOwn(map, key)) return map[key];
  for (const [raw, value] of Object.entries(map)) {
    if (normaliseKey(raw) === key) return value;
  }
  return undefined;
}

function normaliseKey(key: string): string {
  let k = key;
  const scheme = /^[a-z]+:\/\//i.exec(k);
  if (scheme) {
    // Docker's legacy keys carry a scheme and an API path (`https://index.docker.io/v1/`): keep the host only.
    k = k.slice(scheme[0].length).split('/')[0]!;
  }
  k = k.replace(/\/+$/, '');
  if (k === 'index.docker.io' || k === 'registry-1.docker.io') return DOCKER_HUB;
  return k;
}

function entryCredentials(entry: AuthEntry, file: string, key: string): Credentials | undefined {
  const source = file;
  if (typeof entry.identitytoken === 'string' && entry.identitytoken !== '') {
    return { kind: 'identity-token', token: entry.identitytoken, source };
  }
  if (typeof entry.auth === 'string' && entry.auth !== '') {
    const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon <= 0) throw new UserError(`auth file ${file}: auths["${key}"].auth is not base64 of USER:PASSWORD`);
    return { kind: 'basic', username: decoded.slice(0, colon), password: decoded.slice(colon + 1), source };
  }
  if (typeof entry.username === 'string' && typeof entry.password === 'string' && entry.username !== '') {
    return { kind: 'basic', username: entry.username, password: entry.password, source };
  }
  return undefined;
}

const HELPER_TIMEOUT_MS = 60_000;
const HELPER_OUTPUT_LIMIT = 1 << 20;

/**
 * Runs `docker-credential-<name> get` with the registry on stdin (Docker Hub as docker names it).
 * "Not found" is not an error: the search goes on. The helper's output holds the secret, so
 * failures are reported by exit status and stderr's first line only.
 */
export async function runCredentialHelper(
  name: string,
  registry: string,
  env: NodeJS.ProcessEnv,
  namedIn: string,
): Promise<Credentials | undefined> {
  if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new UserError(`${namedIn}: invalid credential helper name "${name}"`);
  const program = `docker-credential-${name}`;
  const serverUrl = registry === DOCKER_HUB ? 'https://index.docker.io/v1/' : registry;
  const { code, stdout, stderr } = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    const child = spawn(program, ['get'], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outBytes = 0;
    const timer = setTimeout(() => child.kill('SIGKILL'), HELPER_TIMEOUT_MS);
    child.stdout.on('data', (b: Buffer) => {
      outBytes += b.length;
      if (outBytes <= HELPER_OUTPUT_LIMIT) out.push(b);
    });
    child.stderr.on('data', (b: Buffer) => {
      if (err.length < 64) err.push(b);
    });
    child.stdin.on('error', () => {}); // a helper that exits without reading stdin
    child.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(
        e.code === 'ENOENT'
          ? new UserError(`credential helper ${program} (named in ${namedIn}) is not on PATH`)
          : new UserError(`cannot run credential helper ${program}: ${e.code ?? e.message}`),
      );
    });
    child.on('close', (exitCode) => {
      clearTimeout(timer);
      resolve({ code: exitCode, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
    });
    child.stdin.end(serverUrl);
  });

  if (code !== 0) {
    if (/credentials not found/i.test(stdout + stderr)) return undefined;
    const why = (stderr.split('\n').find((l) => l.trim() !== '') ?? '').trim().slice(0, 200);
    const status = code === null ? 'was killed (timed out?)' : `exited with status ${code}`;
    throw new UserError(`credential helper ${program} ${status} for ${registry}${why ? `: ${why}` : ''}`);
  }
  let reply: { Username?: unknown; Secret?: unknown };
  try {
    reply = JSON.parse(stdout) as typeof reply;
  } catch {
    throw new UserError(`credential helper ${program} printed something other than JSON for ${registry}`);
  }
  const source = `${program} (from ${namedIn})`;
  if (typeof reply.Secret !== 'string' || reply.Secret === '') return undefined;
  if (reply.Username === '<token>') return { kind: 'identity-token', token: reply.Secret, source };
  if (typeof reply.Username !== 'string' || reply.Username === '') {
    throw new UserError(`credential helper ${program} gave no Username for ${registry}`);
  }
  return { kind: 'basic', username: reply.Username, password: reply.Secret, source };
}
