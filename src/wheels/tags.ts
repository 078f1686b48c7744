/**
 * Whether a wheel's tags (PEP 425) run on the image's Python, with the rules pip applies
 * (packaging.tags): `cp311-cp311`, `cp311-none`, `cpXY-abi3` for XY ≤ 311, `pyXY-none` for XY ≤ 311
 * and `py3-none`, on `any`, `linux_<arch>` or a manylinux platform whose glibc the image has.
 */
import { UserError } from '../util/errors.js';
import { formatTag, type WheelTag } from './filename.js';
import type { WheelInfo } from './wheel-info.js';

export interface TagTarget {
  /** `3.11` */
  pythonVersion: string;
  /** PEP 425 implementation abbreviation; images built by nix2oci run CPython (`cp`). */
  implementation: 'cp';
  platform: 'linux_x86_64' | 'linux_aarch64';
  /** The image's glibc version (`2.40`); when unknown, manylinux wheels of any glibc are accepted. */
  glibc?: string;
}

const IMPLEMENTATIONS: Record<string, string> = { cp: 'CPython', pp: 'PyPy', ip: 'IronPython', jy: 'Jython', py: 'Python' };
const OCI_PLATFORM: Record<TagTarget['platform'], string> = { linux_x86_64: 'linux/amd64', linux_aarch64: 'linux/arm64' };
/** The legacy manylinux names and the glibc each stands for (PEP 600). */
const LEGACY_MANYLINUX: Record<string, [number, number]> = {
  manylinux1: [2, 5],
  manylinux2010: [2, 12],
  manylinux2014: [2, 17],
};

/**
 * Why one tag does not fit: `what` names the build (`built for CPython 3.12`), `detail` the image's side;
 * `python`, when another CPython would take the tag, says which (`3.12`, `3.12 or later`).
 */
interface Problem {
  what: string;
  detail: string;
  python?: string;
}

/**
 * Returns the first of the wheel's tags the target supports, or throws a UserError saying why none does,
 * e.g. `torch-…-cp312-cp312-linux_x86_64.whl: built for CPython 3.12 (tag cp312-cp312-linux_x86_64), the image's Python is 3.11`.
 * With several tags, the distinct reasons are listed once each.
 */
export function checkWheelTags(info: Pick<WheelInfo, 'file' | 'tags'>, target: TagTarget): WheelTag {
  const [major, minor] = parseTargetVersion(target.pythonVersion);
  const perTag: { tag: WheelTag; python: Problem | null; platform: string | null }[] = [];
  for (const tag of info.tags) {
    const python = pythonMismatch(tag, target, major, minor);
    const platform = platformMismatch(tag, target);
    if (python === null && platform === null) return tag;
    perTag.push({ tag, python, platform });
  }
  const fix = otherPythonFix(perTag, target);
  if (perTag.length === 1) {
    const { tag, python, platform } = perTag[0]!;
    const reasons = [...(python ? [`${python.what} (tag ${formatTag(tag)})${python.detail}`] : []), ...(platform ? [platform] : [])];
    throw new UserError(`${info.file}: ${reasons.join('; ')}${fix}`);
  }
  const reasons: string[] = [];
  const note = (reason: string) => {
    if (!reasons.includes(reason)) reasons.push(reason);
  };
  for (const { python } of perTag) if (python) note(python.what);
  for (const { platform } of perTag) if (platform) note(platform);
  throw new UserError(
    `${info.file}: no tag runs on the image's Python ${target.pythonVersion} on ${OCI_PLATFORM[target.platform]}: ${reasons.join('; ')}${fix}`,
  );
}

/**
 * When the only thing wrong with some tag is the CPython version, what to do about it: export the
 * closure with that Python instead (its nixpkgs attribute, e.g. `python311`), or get the wheel built
 * for the image's Python. Empty when no other CPython would take the wheel on this platform.
 */
function otherPythonFix(perTag: { python: Problem | null; platform: string | null }[], target: TagTarget): string {
  const versions: string[] = [];
  for (const { python, platform } of perTag) {
    if (platform === null && python?.python !== undefined && !versions.includes(python.python)) versions.push(python.python);
  }
  if (versions.length === 0) return '';
  const attributes = versions.map((v) => `python${v.replace(/ or later$/, '').replace('.', '')}`);
  const own = `cp${target.pythonVersion.replace('.', '')}`;
  return (
    `: export the closure with Python ${versions.join(' or ')} instead (nixpkgs' ${[...new Set(attributes)].join(' or ')}),` +
    ` or use a wheel built for ${own}`
  );
}

function parseTargetVersion(version: string): [number, number] {
  const match = /^(\d+)\.(\d+)$/.exec(version);
  if (!match) throw new UserError(`Python version ${version} is not of the form 3.11`);
  return [Number(match[1]), Number(match[2])];
}

/** Why the python and ABI tags do not fit, or null when they do. */
function pythonMismatch(tag: WheelTag, target: TagTarget, major: number, minor: number): Problem | null {
  const parsed = /^([a-z]+?)(\d)(\d*)$/.exec(tag.python);
  if (!parsed) return { what: `unknown Python tag ${tag.python}`, detail: '' };
  const [, impl, tagMajorText, tagMinorText] = parsed as unknown as [string, string, string, string];
  const tagMajor = Number(tagMajorText);
  const tagMinor = tagMinorText === '' ? null : Number(tagMinorText);
  const implName = IMPLEMENTATIONS[impl] ?? impl;
  const built = { what: `built for ${implName} ${tagMajor}${tagMinor === null ? '' : `.${tagMinor}`}`, detail: `, the image's Python is ${target.pythonVersion}` };
  const abiProblem = (provides: string) => ({
    what: `built for ABI ${tag.abi}`,
    detail: `; the image's Python ${target.pythonVersion} takes ${provides}`,
  });

  if (impl !== 'py' && impl !== target.implementation) return { ...built, detail: `${built.detail} (CPython)` };
  if (tagMajor !== major) return built;

  if (impl === 'py') {
    // Generic Python tags carry no ABI.
    if (tag.abi !== 'none') return abiProblem('none with generic py tags');
    if (tagMinor !== null && tagMinor > minor) return built;
    return null;
  }

  const cpTag = `cp${major}${minor}`;
  if (tag.abi === 'abi3') {
    // The stable ABI: built for 3.N, runs on every later 3.x.
    return tagMinor !== null && tagMinor > minor ? { ...built, python: `${tagMajor}.${tagMinor} or later` } : null;
  }
  if (tagMinor !== minor) {
    // cpXY-cpXY (or cpXY-none) runs on CPython X.Y exactly; another ABI would not run there either.
    const abiFits = tag.abi === `cp${tagMajor}${tagMinor ?? ''}` || tag.abi === 'none';
    return tagMinor !== null && abiFits ? { ...built, python: `${tagMajor}.${tagMinor}` } : built;
  }
  if (tag.abi !== cpTag && tag.abi !== 'none') return abiProblem(`${cpTag}, abi3 and none`);
  return null;
}

/** The reason the platform tag does not fit, or null when it does. */
function platformMismatch(tag: WheelTag, target: TagTarget): string | null {
  const platform = tag.platform;
  if (platform === 'any') return null;
  const arch = target.platform.slice('linux_'.length);
  const doesNotRun = `platform ${platform} does not run on ${OCI_PLATFORM[target.platform]}`;
  if (platform === target.platform) return null;

  let glibc: [number, number] | null = null;
  const modern = /^manylinux_(\d+)_(\d+)_(.+)$/.exec(platform);
  const legacy = /^(manylinux1|manylinux2010|manylinux2014)_(.+)$/.exec(platform);
  let tagArch: string | null = null;
  if (modern) {
    glibc = [Number(modern[1]), Number(modern[2])];
    tagArch = modern[3]!;
  } else if (legacy) {
    glibc = LEGACY_MANYLINUX[legacy[1]!]!;
    tagArch = legacy[2]!;
  }
  if (glibc === null || tagArch !== arch) {
    if (/^musllinux_\d+_\d+_/.test(platform) && platform.endsWith(`_${arch}`)) {
      return `platform ${platform} needs musl libc; the image's Python uses glibc`;
    }
    return doesNotRun;
  }
  if (target.glibc !== undefined) {
    const have = /^(\d+)\.(\d+)$/.exec(target.glibc);
    if (!have) throw new UserError(`glibc version ${target.glibc} is not of the form 2.40`);
    const [haveMajor, haveMinor] = [Number(have[1]), Number(have[2])];
    if (haveMajor !== glibc[0] || haveMinor < glibc[1]) {
      return `platform ${platform} needs glibc ${glibc[0]}.${glibc[1]} or later, the image has glibc ${target.glibc}`;
    }
  }
  return null;
}
