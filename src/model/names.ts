import { UserError } from '../util/errors.js';

/*
 * Image names as recorded in archives (`--tag NAME[:TAG]`). Kept here rather than borrowed from the
 * registry client so that writing an archive needs no network code; the rules are Docker's reference grammar.
 */

const COMPONENT = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/;
const HOST = /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$/;
const TAG = /^[\w][\w.-]{0,127}$/;

interface ParsedName {
  /** Registry host as written, or undefined when the name has none (Docker Hub). */
  host?: string;
  path: string;
  tag: string;
}

function parseName(text: string): ParsedName {
  const fail = (why: string): never => {
    throw new UserError(`invalid tag "${text}": ${why}`);
  };
  if (text === '' || /\s/.test(text)) fail('expected NAME[:TAG], e.g. nix2oci/demo:latest');
  if (text.includes('@')) fail('a digest cannot be recorded as a tag');
  let rest = text;
  let host: string | undefined;
  const slash = rest.indexOf('/');
  if (slash >= 0) {
    const first = rest.slice(0, slash);
    if (first.includes('.') || first.includes(':') || first === 'localhost' || first.startsWith('[')) {
      if (!HOST.test(first)) fail(`"${first}" is not a valid registry host`);
      host = first;
      rest = rest.slice(slash + 1);
    }
  }
  let tag = 'latest';
  const colon = rest.lastIndexOf(':');
  if (colon >= 0) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) fail(`"${tag}" is not a valid tag (letters, digits, _ . -; at most 128)`);
  }
  if (rest === '') fail('the repository name is missing');
  for (const component of rest.split('/')) {
    if (!COMPONENT.test(component)) fail(`"${component}" must be lowercase letters, digits and separators (. _ __ -)`);
  }
  return { ...(host !== undefined && { host }), path: rest, tag };
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
  const registry = host ?? 'docker.io';
  const repository = registry === 'docker.io' && !path.includes('/') ? `library/${path}` : path;
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
