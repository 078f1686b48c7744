import { UserError } from '../util/errors.js';

/**
 * A reference to an image in a registry, `HOST[:PORT]/REPO[:TAG][@DIGEST]`, with Docker's rules:
 * the first component is a registry host when it has a `.` or `:` or is `localhost` (IPv4 and
 * `[IPv6]` hosts qualify by their dots and colons); otherwise the image lives on Docker Hub.
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

export function parseReference(text: string): ImageReference {
  const fail = (why: string): never => {
    throw new UserError(`invalid image reference "${text}": ${why}`);
  };
  if (text.trim() === '' || /\s/.test(text)) fail('expected HOST[:PORT]/REPO[:TAG]');
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) fail('leave out the scheme (https://); use --tls-verify=false for plain HTTP');

  let rest = text;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) fail(`"${digest}" is not a sha256 digest`);
  }

  let registry = DOCKER_HUB;
  const slash = rest.indexOf('/');
  const first = slash >= 0 ? rest.slice(0, slash) : '';
  if (slash >= 0 && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    registry = first;
    rest = rest.slice(slash + 1);
    if (!HOST.test(registry)) fail(`"${registry}" is not a valid registry host`);
    const port = /:(\d+)$/.exec(registry)?.[1];
    if (port !== undefined && (Number(port) < 1 || Number(port) > 65535)) fail(`port ${port} is out of range`);
  }

  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon >= 0) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) fail(`"${tag}" is not a valid tag`);
  }

  if (rest === '') fail('the repository is missing');
  for (const component of rest.split('/')) {
    if (!PATH_COMPONENT.test(component)) {
      fail(`repository component "${component}" must be lowercase letters, digits and separators (. _ __ -)`);
    }
  }
  let repository = rest;
  if (registry === DOCKER_HUB && !repository.includes('/')) repository = `library/${repository}`;
  if (repository.length > MAX_NAME_LENGTH) fail(`the repository name is longer than ${MAX_NAME_LENGTH} characters`);

  return { registry, repository, ...(tag !== undefined && { tag }), ...(digest !== undefined && { digest }) };
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
