import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { PackageURL } from 'packageurl-js';
import parseSpdxExpression from 'spdx-expression-parse';
import type { Closure } from '../nix/types.js';
import { storePathName } from '../nix/store-path.js';
import type { Descriptor, Image } from '../model/image.js';
import { sha256Digest } from '../model/manifest.js';
import { parseHeaders } from '../wheels/metadata.js';
import type { WheelInfo } from '../wheels/wheel-info.js';
import { byCodeUnits } from '../util/order.js';

/**
 * What an SBOM says, gathered from what the build knows (never by scanning the layers): every store
 * path with its NAR hash and references, every wheel with its metadata and file hash, which layer
 * holds each, and the image. Both SBOM formats are written from this one record.
 */
export interface SbomFacts {
  image: {
    /** The recipe's or the first tag's name (`nix2oci/demo`), or null for an unnamed image. */
    name: string | null;
    tags: string[];
    manifest: Descriptor;
    /** Seconds since the epoch: SOURCE_DATE_EPOCH, the one time an SBOM states. */
    created: number;
  };
  tool: { name: string; version: string };
  layers: { digest: string; diffId: string }[];
  storePaths: StorePathFacts[];
  wheels: WheelFacts[];
}

export interface StorePathFacts {
  path: string;
  /** The store path's 32-character hash part. */
  hashPart: string;
  /** Name and version as Nix splits them (`builtins.parseDrvName`); version null when the name has none. */
  name: string;
  version: string | null;
  /** sha256 of the NAR, hex; null in an SBOM rebuilt from an image (its layers do not say). */
  narHash: string | null;
  narSize: number | null;
  /** Store paths it refers to, itself left out, sorted. */
  references: string[];
  /** Digests of the layers holding it. */
  layers: string[];
}

export interface WheelFacts {
  /** PEP 503 normalized name, as the purl wants it. */
  name: string;
  version: string;
  fileName: string;
  /** The wheel file's sha256 and size; null in an SBOM rebuilt from an image. */
  sha256: string | null;
  size: number | null;
  summary?: string;
  homepage?: string;
  /** An SPDX expression, or a license's name as METADATA gives it when it is not one; absent when unknown. */
  license?: { expression: string } | { name: string };
  /** Each requirement that applies in the image, and what serves it (a wheel's name, a store path), if anything. */
  requires: WheelRequirement[];
  layers: string[];
}

export interface WheelRequirement {
  requirement: string;
  served: { wheel: string } | { storePath: string } | null;
}

/** What the build resolved each wheel's requirements to, by wheel name. */
export type ResolvedRequirements = Map<string, WheelRequirement[]>;

export const TOOL_NAME = 'nix2oci';

/** nix2oci's version, from its package.json (the same file in `src/` and `dist/`). */
export function toolVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : '0.0.0';
  } catch {
    return '0.0.0';
  }
}

/**
 * The facts of a built image. `warn` is told, once each, what could not be read (a store path name
 * without a version, a license that is no SPDX expression, METADATA without fields): those fields are left out.
 */
export function gatherFacts(options: {
  image: Image;
  closure: Closure;
  wheels: { info: WheelInfo; layerIndexes: number[] }[];
  /** The index in `image.layers` of the layers holding each store path. */
  storePathLayers: Map<string, number[]>;
  requirements: ResolvedRequirements;
  sourceDateEpoch: number;
  warn: (line: string) => void;
}): SbomFacts {
  const { image } = options;
  const digestsOf = (indexes: number[]) => [...new Set(indexes.map((i) => image.layers[i]!.descriptor.digest))].sort(byCodeUnits);
  const unversioned: string[] = [];
  const storePaths = [...options.closure.paths.values()]
    .map((info): StorePathFacts => {
      const { name, version } = parseDrvName(storePathName(info.path));
      if (version === null) unversioned.push(storePathName(info.path));
      return {
        path: info.path,
        hashPart: info.path.slice('/nix/store/'.length, '/nix/store/'.length + 32),
        name,
        version,
        narHash: info.narHash,
        narSize: info.narSize,
        references: info.references.filter((r) => r !== info.path).sort(byCodeUnits),
        layers: digestsOf(options.storePathLayers.get(info.path) ?? []),
      };
    })
    .sort((a, b) => byCodeUnits(a.path, b.path));
  // One line for all of them: a large closure has many (sources, scripts, `-lib` outputs are fine).
  if (unversioned.length > 0) {
    const names = unversioned.sort(byCodeUnits);
    const shown = names.slice(0, 5).join(', ') + (names.length > 5 ? `, … (${names.length - 5} more)` : '');
    options.warn(`SBOM: ${names.length} store path${names.length === 1 ? ' has' : 's have'} no version in the name (${shown}); ${names.length === 1 ? 'its component has' : 'their components have'} none`);
  }
  const wheels = options.wheels
    .map(({ info, layerIndexes }): WheelFacts => {
      const fileName = info.file.slice(info.file.lastIndexOf('/') + 1);
      const meta = readWheelMetadata(info.metadata.raw, fileName, options.warn);
      return {
        name: info.name,
        version: info.version,
        fileName,
        sha256: info.sha256,
        size: info.fileSize,
        ...meta,
        requires: options.requirements.get(info.name) ?? [],
        layers: digestsOf(layerIndexes),
      };
    })
    .sort((a, b) => byCodeUnits(a.name, b.name));
  const tags = [...image.tags];
  return {
    image: {
      name: tags.length > 0 ? tags[0]!.replace(/:[^:/]*$/, '') : null,
      tags,
      manifest: { mediaType: image.manifestMediaType, digest: sha256Digest(image.manifestBytes), size: image.manifestBytes.length },
      created: options.sourceDateEpoch,
    },
    tool: { name: TOOL_NAME, version: toolVersion() },
    layers: image.layers.map((l) => ({ digest: l.descriptor.digest, diffId: l.diffId })),
    storePaths,
    wheels,
  };
}

/**
 * Nix's `builtins.parseDrvName`: the version begins after the first `-` that is followed by something
 * other than a letter (`python3-3.11.9` → `python3` `3.11.9`; `bash-interactive-5.2p26`).
 */
export function parseDrvName(name: string): { name: string; version: string | null } {
  for (let i = 0; i + 1 < name.length; i++) {
    if (name[i] === '-' && !/[A-Za-z]/.test(name[i + 1]!)) return { name: name.slice(0, i), version: name.slice(i + 1) };
  }
  return { name, version: null };
}

/** Summary, home page and license from METADATA; what cannot be read is left out, with a warning. */
export function readWheelMetadata(raw: string, fileName: string, warn: (line: string) => void): Pick<WheelFacts, 'summary' | 'homepage' | 'license'> {
  if (raw.includes('\uFFFD')) warn(`SBOM: ${fileName}: METADATA is not valid UTF-8; the fields it spoils are left out`);
  const fields = parseHeaders(raw);
  if (fields.length === 0) {
    warn(`SBOM: ${fileName}: METADATA has no readable fields; its license, summary and home page are left out`);
    return {};
  }
  const first = (key: string) => fields.find(([k]) => k === key)?.[1];
  const clean = (text: string | undefined) => (text !== undefined && text !== '' && !text.includes('\uFFFD') && text !== 'UNKNOWN' ? text : undefined);
  const summary = clean(first('summary'));
  const homepage = clean(first('home-page'));
  return { ...(summary && { summary }), ...(homepage && { homepage }), ...licenseOf(first('license-expression'), first('license'), fileName, warn) };
}

function licenseOf(expression: string | undefined, text: string | undefined, fileName: string, warn: (line: string) => void): Pick<WheelFacts, 'license'> {
  if (expression !== undefined) {
    if (isSpdxExpression(expression)) return { license: { expression } };
    warn(`SBOM: ${fileName}: License-Expression ${JSON.stringify(expression.slice(0, 80))} is not an SPDX expression; left out`);
  }
  const license = text?.trim();
  if (license === undefined || license === '' || license === 'UNKNOWN') return {};
  if (isSpdxExpression(license)) return { license: { expression: license } };
  // A license's name ("BSD License") is worth keeping; a whole license text pasted in is not a name.
  if (!license.includes('\n') && license.length <= 100 && !license.includes('\uFFFD')) return { license: { name: license } };
  warn(`SBOM: ${fileName}: the License field is neither an SPDX expression nor a license name (${license.length} characters of text); left out`);
  return {};
}

export function isSpdxExpression(text: string): boolean {
  try {
    parseSpdxExpression(text);
    return true;
  } catch {
    return false;
  }
}

/**
 * A UUID (version 5 layout) derived from `seed`: the same image always gets the same CycloneDX
 * serial number and SPDX namespace, and no two images share one.
 */
export function uuidFrom(seed: string): string {
  const h = createHash('sha1').update(`nix2oci:${seed}`).digest();
  h[6] = (h[6]! & 0x0f) | 0x50;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const hex = h.subarray(0, 16).toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** `pkg:nix/<name>@<version>` (purl-spec's proposed `nix` type) for a store path; see README, "SBOM". */
export function storePathPurl(p: Pick<StorePathFacts, 'name' | 'version'>): string {
  return new PackageURL('nix', undefined, p.name, p.version ?? undefined, undefined, undefined).toString();
}

/** `pkg:pypi/<name>@<version>`. */
export function wheelPurl(w: Pick<WheelFacts, 'name' | 'version'>): string {
  return new PackageURL('pypi', undefined, w.name, w.version, undefined, undefined).toString();
}

/** The image as purl-spec's `oci` type: `pkg:oci/<repository>@sha256:<hex>?tag=<tag>`. */
export function imagePurl(image: SbomFacts['image']): string {
  const repo = image.name ? image.name.slice(image.name.lastIndexOf('/') + 1).toLowerCase() : 'image';
  const tag = image.tags[0]?.match(/:([^:/]+)$/)?.[1];
  return new PackageURL('oci', undefined, repo, image.manifest.digest, tag ? { tag } : undefined, undefined).toString();
}

/** ISO 8601 UTC without fractions, as SPDX's pattern wants it. */
export function isoSeconds(epochSeconds: number): string {
  return new Date(epochSeconds * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
}
