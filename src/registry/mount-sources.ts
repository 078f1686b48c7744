import type { Image } from '../model/image.js';
import { parseReference } from '../model/reference.js';

/**
 * Annotation naming repositories (on the same registry) that likely hold some of the image's blobs,
 * so a push can mount them instead of uploading: a comma- or space-separated list such as
 * `team/base, team/python`. Read from the manifest's annotations (for every blob) and from a layer
 * descriptor's annotations (for that layer).
 */
export const MOUNT_FROM_ANNOTATION = 'dev.nix2oci.mount-from';
/** The OCI base image annotation: a full reference; used when it is on the registry being pushed to. */
const BASE_NAME_ANNOTATION = 'org.opencontainers.image.base.name';

export interface MountSources {
  /** For every blob. */
  image: string[];
  /** Extra sources for one blob, by digest. */
  byDigest: Map<string, string[]>;
}

export function mountSources(image: Image, registry: string, fromFlags: string[]): MountSources {
  const forEveryBlob = [...fromFlags];
  const annotations = manifestAnnotations(image.manifestBytes);
  forEveryBlob.push(...splitList(annotations[MOUNT_FROM_ANNOTATION]));
  const base = annotations[BASE_NAME_ANNOTATION];
  if (base) {
    try {
      const ref = parseReference(base);
      if (ref.registry === registry) forEveryBlob.push(ref.repository);
    } catch {
      // An annotation we cannot read is only a missed shortcut, never a failed push.
    }
  }
  const byDigest = new Map<string, string[]>();
  for (const layer of image.layers) {
    const extra = splitList(layer.descriptor.annotations?.[MOUNT_FROM_ANNOTATION]);
    if (extra.length) byDigest.set(layer.descriptor.digest, extra);
  }
  return { image: unique(forEveryBlob), byDigest };
}

/** The sources to try for one blob: its own first (more specific), then the image's. */
export function sourcesFor(sources: MountSources, digest: string): string[] {
  return unique([...(sources.byDigest.get(digest) ?? []), ...sources.image]);
}

/** Every source, for the token's pull scopes. */
export function allSources(sources: MountSources): string[] {
  return unique([...sources.image, ...[...sources.byDigest.values()].flat()]);
}

function manifestAnnotations(manifestBytes: Buffer): Record<string, string> {
  try {
    const manifest = JSON.parse(manifestBytes.toString('utf8')) as { annotations?: unknown };
    const annotations = manifest.annotations;
    if (annotations && typeof annotations === 'object' && !Array.isArray(annotations)) {
      return Object.fromEntries(Object.entries(annotations).filter(([, v]) => typeof v === 'string')) as Record<string, string>;
    }
  } catch {
    // The manifest is pushed as it is; the registry will judge it.
  }
  return {};
}

const REPOSITORY = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/;

function splitList(value: string | undefined): string[] {
  return (value ?? '').split(/[\s,]+/).filter((s) => REPOSITORY.test(s));
}

function unique(values: string[]): string[] {
  return [...new Set(values)];
}
