import { satisfies, valid } from '@renovatebot/pep440';
import { UserError } from '../../util/errors.js';
import { parseCoreMetadata } from '../metadata.js';
import type { Closure } from '../../nix/types.js';
import type { ClosureIndex, ReadFile } from './closure-index.js';
import type { ImagePython } from './python.js';
import {
  evaluateMarker,
  normalizeName,
  parseRequirement,
  Pep508Error,
  type MarkerEnvironment,
  type Requirement,
} from './pep508.js';

/**
 * The requirements check: `pip check` without Python. Each installed wheel's Requires-Dist is
 * evaluated for the image's Python and platform and checked, with PEP 440 specifiers, against the
 * distributions the image holds (the wheels, and the .dist-info/.egg-info in the closure's
 * site-packages). Extras are followed: `fastapi[standard]` also checks fastapi's `standard` extra.
 */

/** One distribution the image holds. */
export interface Distribution {
  /** The name as its metadata spells it. */
  name: string;
  version: string;
  requiresDist: string[];
  requiresPython?: string;
  /** Where it was read: a wheel file, or a METADATA path in the closure. */
  source: string;
  /** True for a wheel being installed (its own requirements are checked). */
  wheel: boolean;
}

export interface UnmetRequirement {
  /** `vllm 0.12.0`, or `fastapi[standard] 0.115.0` for an extra's requirement. */
  requirer: string;
  /** The required distribution, as the requirer spells it. */
  name: string;
  /** The requirement without its marker: `fastapi[standard]>=0.115.0`. */
  wanted: string;
  /** The version the image holds, or null when it holds none. */
  found: string | null;
}

export interface RequirementsResult {
  unmet: UnmetRequirement[];
  /** Unmet requirements whose name the recipe waives. */
  waived: UnmetRequirement[];
}

/** The marker environment of a CPython on Linux (x86_64 unless told otherwise). */
export function markerEnvironment(python: Pick<ImagePython, 'version' | 'fullVersion'>, machine = 'x86_64'): MarkerEnvironment {
  // Without a full version in the store path's name, the first release of the minor version is assumed.
  const full = python.fullVersion ?? `${python.version}.0`;
  return {
    python_version: python.version,
    python_full_version: full,
    os_name: 'posix',
    sys_platform: 'linux',
    platform_release: '',
    platform_system: 'Linux',
    platform_version: '',
    platform_machine: machine,
    platform_python_implementation: 'CPython',
    implementation_name: 'cpython',
    implementation_version: full,
    extra: '',
  };
}

/** `vllm 0.12.0 requires fastapi[standard]>=0.115.0, found 0.110.0` */
export function formatUnmet(u: UnmetRequirement): string {
  return `${u.requirer} requires ${u.wanted}, ${u.found === null ? 'not found' : `found ${u.found}`}`;
}

/**
 * Checks every wheel's requirements against the distributions. When a name is held twice, the wheel
 * wins, then the first closure distribution in `closureDistributions` order (the interpreter's own
 * site-packages first, as on sys.path). `waive` names (any spelling) move unmet requirements to `waived`.
 */
export function checkRequirements(options: {
  wheels: Distribution[];
  closureDistributions: Distribution[];
  environment: MarkerEnvironment;
  waive?: string[];
}): RequirementsResult {
  const { environment } = options;
  const held = new Map<string, Distribution>();
  for (const d of options.wheels) held.set(normalizeName(d.name), d);
  for (const d of options.closureDistributions) if (!held.has(normalizeName(d.name))) held.set(normalizeName(d.name), d);
  const waive = new Set((options.waive ?? []).map(normalizeName));
  const result: RequirementsResult = { unmet: [], waived: [] };
  const report = (u: UnmetRequirement) => (waive.has(normalizeName(u.name)) ? result.waived : result.unmet).push(u);

  // (distribution, extra) pairs to check; '' is the distribution's own requirements.
  const queue: { dist: Distribution; extra: string }[] = options.wheels.map((dist) => ({ dist, extra: '' }));
  const seen = new Set(queue.map(({ dist }) => `${normalizeName(dist.name)}[]`));

  for (const wheel of options.wheels) {
    if (wheel.requiresPython && !versionSatisfies(environment.python_full_version, wheel.requiresPython)) {
      report({ requirer: `${wheel.name} ${wheel.version}`, name: 'python', wanted: `python${wheel.requiresPython}`, found: environment.python_full_version });
    }
  }

  while (queue.length > 0) {
    const { dist, extra } = queue.shift()!;
    const requirer = extra ? `${dist.name}[${extra}] ${dist.version}` : `${dist.name} ${dist.version}`;
    for (const line of dist.requiresDist) {
      const req = parse(line, dist);
      if (!applies(req, environment, extra)) continue;
      const target = held.get(normalizeName(req.name));
      if (!target) {
        report({ requirer, name: req.name, wanted: wantedText(req), found: null });
        continue;
      }
      if (req.url === null && !versionSatisfies(target.version, req.specifier)) {
        report({ requirer, name: req.name, wanted: wantedText(req), found: target.version });
      }
      for (const wantedExtra of req.extras) {
        const key = `${normalizeName(target.name)}[${normalizeName(wantedExtra)}]`;
        if (seen.has(key)) continue;
        seen.add(key);
        queue.push({ dist: target, extra: normalizeName(wantedExtra) });
      }
    }
  }
  return result;
}

/**
 * Whether a requirement applies: its marker holds for the environment (with `extra` set). For an
 * extra's pass, only the requirements the extra adds count (those not holding without it), so a
 * distribution's own requirements are checked once and a closure distribution's never (Nix built it).
 */
function applies(req: Requirement, environment: MarkerEnvironment, extra: string): boolean {
  if (!extra) return req.marker === null || evaluateMarker(req.marker, environment);
  if (req.marker === null) return false;
  return evaluateMarker(req.marker, { ...environment, extra }) && !evaluateMarker(req.marker, environment);
}

function versionSatisfies(version: string, specifier: string): boolean {
  if (specifier.trim() === '') return true;
  if (!valid(version)) return false;
  return satisfies(version, specifier, { prereleases: true });
}

function wantedText(req: Requirement): string {
  const extras = req.extras.length > 0 ? `[${req.extras.join(',')}]` : '';
  return req.url !== null ? `${req.name}${extras} @ ${req.url}` : `${req.name}${extras}${req.specifier}`;
}

function parse(line: string, dist: Distribution): Requirement {
  try {
    return parseRequirement(line);
  } catch (err) {
    if (err instanceof Pep508Error) {
      throw new UserError(`${dist.source}: Requires-Dist "${line}" is not a valid requirement: ${err.message}`);
    }
    throw err;
  }
}

/**
 * Reads the distributions in the closure's site-packages for the image's Python version, in
 * `python.sitePackages` order. Metadata without a name or version (or unreadable) is skipped and named in `skipped`.
 */
export async function readClosureDistributions(
  closure: Closure,
  index: ClosureIndex,
  python: ImagePython,
  readFile: ReadFile,
): Promise<{ distributions: Distribution[]; skipped: string[] }> {
  const order = new Map(python.sitePackages.map((dir, i) => [dir, i]));
  const files = index.distributionFiles
    .filter((f) => f.version === python.version && order.has(f.sitePackages))
    .sort((a, b) => order.get(a.sitePackages)! - order.get(b.sitePackages)! || (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const distributions: Distribution[] = [];
  const skipped: string[] = [];
  for (const file of files) {
    const info = closure.paths.get(file.storePath)!;
    const source = `${file.storePath}/${file.path}`;
    const bytes = await readFile(info, file.path);
    const meta = bytes ? parseCoreMetadata(bytes.toString('utf8')) : { name: null, version: null, requiresDist: [] };
    if (meta.name === null || meta.version === null) {
      skipped.push(source);
      continue;
    }
    distributions.push({
      name: meta.name,
      version: meta.version,
      requiresDist: meta.requiresDist,
      ...(meta.requiresPython !== undefined ? { requiresPython: meta.requiresPython } : {}),
      source,
      wheel: false,
    });
  }
  return { distributions, skipped };
}

/** A requirement of a wheel and the distribution that serves it in the image (null when none does). */
export interface ServedRequirement {
  requirement: string;
  /** The serving distribution's `source`: a wheel file, or a METADATA path in the closure. */
  by: Distribution | null;
}

/**
 * For each wheel (by its name as given), its own requirements that apply in the environment and what
 * serves each, held as `checkRequirements` holds them (a wheel first, then the closure in sys.path order).
 * A requirement that cannot be parsed is left out (the requirements check reports it when it runs).
 */
export function servingDistributions(options: {
  wheels: Distribution[];
  closureDistributions: Distribution[];
  environment: MarkerEnvironment;
}): Map<string, ServedRequirement[]> {
  const held = new Map<string, Distribution>();
  for (const d of options.wheels) held.set(normalizeName(d.name), d);
  for (const d of options.closureDistributions) if (!held.has(normalizeName(d.name))) held.set(normalizeName(d.name), d);
  const served = new Map<string, ServedRequirement[]>();
  for (const wheel of options.wheels) {
    const list: ServedRequirement[] = [];
    for (const line of wheel.requiresDist) {
      let req: Requirement;
      try {
        req = parseRequirement(line);
      } catch {
        continue;
      }
      if (!applies(req, options.environment, '')) continue;
      list.push({ requirement: line, by: held.get(normalizeName(req.name)) ?? null });
    }
    served.set(wheel.name, list);
  }
  return served;
}
