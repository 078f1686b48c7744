import { UserError } from '../util/errors.js';

/**
 * A reference to an image in a registry, `HOST[:PORT]/REPO[:TAG][@DIGEST]`, with Docker's rules:
 * the first component is a registry host when it has a `.` or `:` or is `localhost` (IPv4 and
 * `[IPv6]` hosts qualify by their dots and colons); otherwise the image lives on Docker Hub.
 * The same grammar checks the names recorded in archives (normalizeTag, qualifiedName).
 */
export interface ImageReference {
  /** The registry as credentials are keyed: `localhost:5000`, `127.0.0.1:5000`, `docker.io`. */
  registry: string;
  /** Repository path inside the registry: `team/app`, `library/alpine`. */
  repository: string;
  /** Tag, when the reference names one. */
  tag?: string;
  /** `sha256:<hex>`, when the reference names one. */
  digest?: string;
}

export const DOCKER_HUB = 'docker.io';
const DOCKER_HUB_ENDPOINT = 'registry-1.docker.io';

const HOST_LABEL = '(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)';
const HOST = new RegExp(`^(?:${HOST_LABEL}(?:\\.${HOST_LABEL})*|\\[[0-9a-fA-F:.]+\\])(?::[0-9]{1,5})?$`);
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^sha256:[0-9a-f]{64}$/;
const MAX_NAME_LENGTH = 255;

/** A reference as written, split by Docker's grammar: host (when the first component names one), path, tag, digest. */
interface Parts {
  host?: string;
  path: string;
  tag?: string;
  digest?: string;
}

/**
 * The one reference grammar, for registry references and names recorded in archives alike: the first
 * component is a registry host when it has a `.` or `:`, is `localhost`, or is an `[IPv6]` address.
 */
function splitReference(text: string, fail: (why: string) => never): Parts {
  if (text.trim() === '' || /\s/.test(text)) fail('expected HOST[:PORT]/REPO[:TAG]');
  let rest = text;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) fail(`"${digest}" is not a sha256 digest`);
  }
  let host: string | undefined;
  const slash = rest.indexOf('/');
  const first = slash >= 0 ? rest.slice(0, slash) : '';
  if (slash >= 0 && (first.includes('.') || first.includes(':') || first === 'localhost' || first.startsWith('['))) {
    if (!HOST.test(first)) fail(`"${first}" is not a valid registry host`);
    const port = /:(\d+)$/.exec(first)?.[1];
    if (port !== undefined && (Number(port) < 1 || Number(port) > 65535)) fail(`port ${port} is out of range`);
    host = first;
    rest = rest.slice(slash + 1);
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon >= 0) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) fail(`"${tag}" is not a valid tag (letters, digits, _ . -; at most 128)`);
  }
  if (rest === '') fail('the repository is missing');
  for (const component of rest.split('/')) {
    if (!PATH_COMPONENT.test(component)) fail(`repository component "${component}" must be lowercase letters, digits and separators (. _ __ -)`);
  }
  return { ...(host !== undefined && { host }), path: rest, ...(tag !== undefined && { tag }), ...(digest !== undefined && { digest }) };
}

export function parseReference(text: string): ImageReference {
  const fail = (why: string): never => {
    throw new UserError(`invalid image reference "${text}": ${why}`);
  };
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) fail('leave out the scheme (https://); use --tls-verify=false for plain HTTP');
  const { host, path, tag, digest } = splitReference(text, fail);
  const registry = host ?? DOCKER_HUB;
  const repository = registry === DOCKER_HUB && !path.includes('/') ? `library/${path}` : path;
  if (repository.length > MAX_NAME_LENGTH) fail(`the repository name is longer than ${MAX_NAME_LENGTH} characters`);
  return { registry, repository, ...(tag !== undefined && { tag }), ...(digest !== undefined && { digest }) };
}

/** A name recorded in an archive (`--tag NAME[:TAG]`): no digest; the tag `latest` when none is given. */
function parseName(text: string): { host?: string; path: string; tag: string } {
  const fail = (why: string): never => {
    throw new UserError(`invalid tag "${text}": ${why}`);
  };
  if (text.includes('@')) fail('a digest cannot be recorded as a tag');
  const { host, path, tag } = splitReference(text, fail);
  return { ...(host !== undefined && { host }), path, tag: tag ?? 'latest' };
}

/** `NAME[:TAG]` checked and completed with `:latest` when it has no tag: `nix2oci/demo` → `nix2oci/demo:latest`. */
export function normalizeTag(text: string): string {
  const { host, path, tag } = parseName(text);
  return `${host !== undefined ? `${host}/` : ''}${path}:${tag}`;
}

/**
 * The fully qualified name Docker and containerd give a tag: `demo:1` → `docker.io/library/demo:1`.
 * Recorded as `io.containerd.image.name`, which containerd-based `docker load` reads.
 */
export function qualifiedName(text: string): string {
  const { host, path, tag } = parseName(text);
  const registry = host ?? DOCKER_HUB;
  const repository = registry === DOCKER_HUB && !path.includes('/') ? `library/${path}` : path;
  return `${registry}/${repository}:${tag}`;
}

/** Whether two names denote the same image as Docker resolves them (`demo` = `docker.io/library/demo:latest`). */
export function sameImageName(a: string, b: string): boolean {
  if (a === b) return true;
  try {
    return qualifiedName(a) === qualifiedName(b);
  } catch {
    return false;
  }
}

/** Checks a tag given on its own (e.g. with `--tag`). */
export function parseTag(tag: string): string {
  if (!TAG.test(tag)) throw new UserError(`invalid tag "${tag}": up to 128 letters, digits, _ . - (not starting with . or -)`);
  return tag;
}

/** Checks a repository named on its own (e.g. with `--mount-from`), which lives on the same registry. */
export function parseRepository(repository: string): string {
  const valid = repository.length <= MAX_NAME_LENGTH && repository.split('/').every((c) => PATH_COMPONENT.test(c));
  if (!valid) throw new UserError(`invalid repository "${repository}": lowercase path components such as team/base`);
  return repository;
}

/** The host:port to connect to for a registry (Docker Hub's API is not served at docker.io). */
export function registryEndpoint(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_ENDPOINT : registry;
}

/** `registry/repository` followed by `:tag` and/or `@digest`. */
export function formatReference(ref: Pick<ImageReference, 'registry' | 'repository'>, tag?: string, digest?: string): string {
  return `${ref.registry}/${ref.repository}${tag ? `:${tag}` : ''}${digest ? `@${digest}` : ''}`;
}
