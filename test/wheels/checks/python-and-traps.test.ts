import { describe, it, expect, beforeAll } from 'vitest';
import { nixBuild } from '../../helpers/nix.js';
import { tools } from '../../helpers/tools.js';
import { indexClosure } from '../../../src/wheels/checks/closure-index.js';
import { findImagePython } from '../../../src/wheels/checks/python.js';
import { checkTraps } from '../../../src/wheels/checks/traps.js';
import { readClosureDistributions } from '../../../src/wheels/checks/requirements.js';
import { UserError } from '../../../src/util/errors.js';
import { localClosure, listFromDisk, readFromDisk } from './store-listing.js';

/**
 * Store paths shaped like nixpkgs' (made with real Nix, tiny): a base python, a withPackages-style
 * env referring to it, a second unrelated python, a package with a dist-info and an amdsmi symlink,
 * gcc's runtime libraries, a compiler and Python's headers.
 */
let p: Record<string, string> = {};

beforeAll(() => {
  if (!tools('nix-build')) return;
  const [base, env, other, pkgs, cxx, cc, bare, runtime] = nixBuild(`
let
  base = mkDrv "python3-3.11.9" ''
    mkdir -p $out/bin $out/lib/python3.11/site-packages $out/include/python3.11
    printf '#!/bin/sh\\n' > $out/bin/python3.11; chmod +x $out/bin/python3.11
    ln -s python3.11 $out/bin/python3
    echo '/* header */' > $out/include/python3.11/Python.h
  '';
  pkgs = mkDrv "python3.11-packages" ''
    sp=$out/lib/python3.11/site-packages
    mkdir -p $sp/fastapi-0.115.4.dist-info $sp/fastapi $sp/legacy.egg-info $sp/broken-1.dist-info $out/share/amd_smi/amdsmi
    printf 'Metadata-Version: 2.1\\nName: fastapi\\nVersion: 0.115.4\\nRequires-Dist: starlette<0.42,>=0.40\\nRequires-Dist: uvicorn; extra == "standard"\\n\\nbody\\n' > $sp/fastapi-0.115.4.dist-info/METADATA
    printf 'Metadata-Version: 1.0\\nName: Legacy_Pkg\\nVersion: 2.0\\n' > $sp/legacy.egg-info/PKG-INFO
    printf 'Metadata-Version: 2.1\\nName: broken\\n' > $sp/broken-1.dist-info/METADATA
    printf 'Metadata-Version: 1.0\\nName: flat\\nVersion: 0.3\\n' > $sp/flat-0.3-py3.11.egg-info
    echo > $sp/fastapi/__init__.py
    echo > $out/share/amd_smi/amdsmi/__init__.py
    ln -s ../../../share/amd_smi/amdsmi $sp/amdsmi
    mkdir -p $out/lib/python3.13/site-packages/old-1.0.dist-info
    printf 'Name: old\\nVersion: 1.0\\n' > $out/lib/python3.13/site-packages/old-1.0.dist-info/METADATA
  '';
  env = mkDrv "python3-3.11.9-env" ''
    mkdir -p $out/bin $out/lib/python3.11/site-packages
    ln -s \${base}/bin/python3.11 $out/bin/python3.11
    ln -s \${pkgs}/lib/python3.11/site-packages/fastapi $out/lib/python3.11/site-packages/fastapi
  '';
  other = mkDrv "python3-3.12.4" ''
    mkdir -p $out/bin $out/lib/python3.12/site-packages
    printf '#!/bin/sh\\n' > $out/bin/python3.12; chmod +x $out/bin/python3.12
  '';
  cxx = mkDrv "gcc-13.3.0-lib" ''
    mkdir -p $out/lib
    echo > $out/lib/libstdc++.so.6.0.33; ln -s libstdc++.so.6.0.33 $out/lib/libstdc++.so.6
    echo > $out/lib/libgcc_s.so.1
  '';
  cc = mkDrv "gcc-wrapper-13.3.0" ''
    mkdir -p $out/bin
    printf '#!/bin/sh\\n' > $out/bin/gcc; chmod +x $out/bin/gcc; ln -s gcc $out/bin/cc
  '';
  bare = mkDrv "python3-minimal-3.11.9" ''
    mkdir -p $out/bin $out/lib/python3.11/site-packages
    printf '#!/bin/sh\\n' > $out/bin/python3.11; chmod +x $out/bin/python3.11
  '';
  # An image's root: its python env directly, and a tool whose scripts run another Python.
  tool = mkDrv "rocm-smi-7.1.1" "mkdir -p $out/bin; echo '#!\${other}/bin/python3.12' > $out/bin/rocm-smi";
  runtime = mkDrv "vllm-rocm-runtime" "mkdir -p $out; echo \${env} \${tool} > $out/refs";
in [ base env other pkgs cxx cc bare runtime ]`);
  p = { base: base!, env: env!, other: other!, pkgs: pkgs!, cxx: cxx!, cc: cc!, bare: bare!, runtime: runtime! };
});

async function inspect(roots: string[], explicit?: string) {
  const closure = localClosure(roots);
  const index = await indexClosure(closure, listFromDisk);
  return { closure, index, python: () => findImagePython(closure, index, explicit) };
}

describe.runIf(tools('nix-build', 'nix-store'))('the image Python', () => {
  it('finds the one store path with bin/python3.X, its version and site-packages', async () => {
    const { python } = await inspect([p.base!, p.pkgs!]);
    expect(python()).toEqual({
      storePath: p.base,
      interpreter: `${p.base}/bin/python3.11`,
      version: '3.11',
      fullVersion: '3.11.9',
      sitePackages: [`${p.base}/lib/python3.11/site-packages`, `${p.pkgs}/lib/python3.11/site-packages`],
    });
  });

  it('prefers a python env over the base python it refers to', async () => {
    const { python } = await inspect([p.env!]);
    const found = python();
    expect(found.storePath).toBe(p.env);
    expect(found.interpreter).toBe(`${p.env}/bin/python3.11`);
    // Its own site-packages first, then the rest by path.
    expect(found.sitePackages[0]).toBe(`${p.env}/lib/python3.11/site-packages`);
    expect(found.sitePackages).toHaveLength(3);
  });

  it('refuses to guess between unrelated pythons, listing them, unless --python names one', async () => {
    const { python } = await inspect([p.env!, p.other!]);
    expect(python).toThrowError(UserError);
    const listed = [`${p.env}/bin/python3.11`, `${p.other}/bin/python3.12`].sort().join(', ');
    expect(python).toThrowError(`more than one Python in the closure: ${listed} (choose one with --python PATH)`);
    expect((await inspect([p.env!, p.other!], p.other)).python()).toMatchObject({ storePath: p.other, version: '3.12', fullVersion: '3.12.4' });
    expect((await inspect([p.env!, p.other!], `${p.base}/bin/python3.11`)).python()).toMatchObject({ storePath: p.base });
  });

  it('takes the Python nearest the roots when a tool deeper down brings another', async () => {
    const { python } = await inspect([p.runtime!]);
    expect(python().storePath).toBe(p.env);
  });

  it('says what is wrong with --python and with a closure without Python', async () => {
    expect((await inspect([p.env!], '/nix/store/00000000000000000000000000000000-nope')).python).toThrowError(
      '--python /nix/store/00000000000000000000000000000000-nope: not in the closure',
    );
    expect((await inspect([p.env!, p.cc!], p.cc)).python).toThrowError(`--python ${p.cc}: ${p.cc} has no bin/python3.X`);
    expect((await inspect([p.cc!])).python).toThrowError('no Python in the closure: no store path has bin/python3.X (give --python PATH)');
  });

  it("reads the closure's distributions for the image's Python version only", async () => {
    const { closure, index, python } = await inspect([p.env!, p.pkgs!]);
    const { distributions, skipped } = await readClosureDistributions(closure, index, python(), readFromDisk);
    expect(distributions.map((d) => `${d.name} ${d.version}`)).toEqual(['fastapi 0.115.4', 'flat 0.3', 'Legacy_Pkg 2.0']);
    expect(distributions[0]!.requiresDist).toEqual(['starlette<0.42,>=0.40', 'uvicorn; extra == "standard"']);
    expect(skipped).toEqual([`${p.pkgs}/lib/python3.11/site-packages/broken-1.dist-info/METADATA`]);
  });
});

/** A distribution as the checks see one (a wheel being installed). */
function dist(name: string, version: string) {
  return { name, version, requiresDist: [], source: `${name}-${version}-py3-none-any.whl`, wheel: true };
}
const VLLM_ROCM = dist('vllm', '0.12.0+rocm711');

describe.runIf(tools('nix-build', 'nix-store'))('trap warnings', () => {
  it('warns when an image with vLLM on ROCm lacks libstdc++/libgcc_s, amdsmi, a C compiler and Python headers', async () => {
    const { index, python } = await inspect([p.bare!]);
    const warnings = checkTraps({ index, python: python(), distributions: [VLLM_ROCM] });
    expect(warnings.map((w) => w.trap)).toEqual(['cxx-runtime', 'amdsmi', 'c-compiler', 'python-headers']);
    expect(warnings[0]!.message).toMatch(/no libstdc\+\+\.so\.6 or libgcc_s\.so\.1 in a lib directory/);
    expect(warnings[1]!.message).toMatch(/Python 3\.11 cannot import amdsmi: vllm 0\.12\.0\+rocm711 detects the ROCm platform/);
    expect(warnings[2]!.message).toMatch(/no C compiler .*Triton, which vllm 0\.12\.0\+rocm711 uses/);
    expect(warnings[3]!.message).toMatch(/no include\/python3\.11\/Python\.h/);
    // Each names the recipe key that turns it off.
    for (const w of warnings) expect(w.message.endsWith(`[checks.skipTraps: "${w.trap}"]`)).toBe(true);
  });

  it('says nothing of vLLM or Triton to an image that has neither (torch, numpy, a server)', async () => {
    const { index, python } = await inspect([p.bare!]);
    const distributions = [dist('torch', '2.9.1+rocm7.1'), dist('numpy', '2.1.0'), dist('fastapi', '0.115.4')];
    expect(checkTraps({ index, python: python(), distributions, env: { ROCM_HOME: '/opt/rocm' } }).map((w) => w.trap)).toEqual(['cxx-runtime']);
  });

  it('warns of the compiler and headers, not amdsmi, for Triton alone (triton, pytorch-triton-rocm)', async () => {
    const { index, python } = await inspect([p.bare!, p.cxx!]);
    for (const triton of [dist('triton', '3.5.0'), dist('pytorch-triton-rocm', '3.5.0')]) {
      const warnings = checkTraps({ index, python: python(), distributions: [triton] });
      expect(warnings.map((w) => w.trap), triton.name).toEqual(['c-compiler', 'python-headers']);
      expect(warnings[0]!.message).toContain(`Triton, which ${triton.name} 3.5.0 uses`);
    }
  });

  it('asks for amdsmi only when the vLLM image shows ROCm (a +rocm version, pytorch-triton-rocm or ROCM_* in its env)', async () => {
    const { index, python } = await inspect([p.bare!, p.cxx!, p.cc!]);
    const traps = (distributions: ReturnType<typeof dist>[], env?: Record<string, string>) =>
      checkTraps({ index, python: python(), distributions, env, skip: ['python-headers'] }).map((w) => w.trap);
    expect(traps([dist('vllm', '0.12.0')])).toEqual([]);
    expect(traps([dist('vllm', '0.12.0')], { ROCM_PATH: '/opt/rocm' })).toEqual(['amdsmi']);
    expect(traps([dist('vllm', '0.12.0'), dist('pytorch-triton-rocm', '3.5.0')])).toEqual(['amdsmi']);
    expect(traps([dist('vllm', '0.12.0'), dist('torch', '2.9.1+rocm7.1.1')])).toEqual(['amdsmi']);
  });

  it('is quiet when the closure has them all (amdsmi as a site-packages symlink, as nixpkgs installs it)', async () => {
    const { index, python } = await inspect([p.env!, p.pkgs!, p.cxx!, p.cc!]);
    expect(checkTraps({ index, python: python(), distributions: [VLLM_ROCM] })).toEqual([]);
  });

  it('counts amdsmi from a wheel, and honours skipped traps', async () => {
    const { index, python } = await inspect([p.bare!, p.cxx!]);
    const py = python();
    const warnings = checkTraps({
      index,
      python: py,
      distributions: [VLLM_ROCM],
      wheelFiles: [`${py.sitePackages[0]}/amdsmi/__init__.py`],
      skip: ['c-compiler'],
    });
    expect(warnings.map((w) => w.trap)).toEqual(['python-headers']);
  });

  it('does not count amdsmi built for another Python version', async () => {
    const { index, python } = await inspect([p.other!, p.pkgs!]);
    expect(checkTraps({ index, python: python(), distributions: [VLLM_ROCM] }).map((w) => w.trap)).toContain('amdsmi');
  });

  it('warns of VLLM_ROCM_USE_AITER=1 without an aiter module, or on a gfx1xxx target; not when it can act', async () => {
    const { index, python } = await inspect([p.env!, p.pkgs!, p.cxx!, p.cc!]);
    const py = python();
    const aiterFiles = [`${py.sitePackages[0]}/aiter/__init__.py`];
    const aiter = (env: Record<string, string>, wheelFiles: string[] = []) =>
      checkTraps({ index, python: py, distributions: [VLLM_ROCM], env, wheelFiles }).filter((w) => w.trap === 'aiter').map((w) => w.message);

    expect(aiter({ VLLM_ROCM_USE_AITER: '1' })).toEqual([
      'VLLM_ROCM_USE_AITER=1 does nothing here: the image has no aiter module, so vLLM ignores it (set VLLM_ROCM_USE_AITER=0) [checks.skipTraps: "aiter"]',
    ]);
    expect(aiter({ VLLM_ROCM_USE_AITER: 'True', PYTORCH_ROCM_ARCH: 'gfx1151' }, aiterFiles)).toEqual([
      'VLLM_ROCM_USE_AITER=True does nothing here: AITER is built for gfx942/gfx950 only and the image targets PYTORCH_ROCM_ARCH=gfx1151 (set VLLM_ROCM_USE_AITER=0) [checks.skipTraps: "aiter"]',
    ]);
    expect(aiter({ VLLM_ROCM_USE_AITER: '1', HSA_OVERRIDE_GFX_VERSION: '11.0.0' }, aiterFiles)[0]).toContain('targets HSA_OVERRIDE_GFX_VERSION=11.0.0');
    // aiter present and a gfx9 target among the image's: it can act; off or unset: nothing to say.
    expect(aiter({ VLLM_ROCM_USE_AITER: '1', PYTORCH_ROCM_ARCH: 'gfx942;gfx1151' }, aiterFiles)).toEqual([]);
    expect(aiter({ VLLM_ROCM_USE_AITER: '1', HSA_OVERRIDE_GFX_VERSION: '9.4.2' }, aiterFiles)).toEqual([]);
    expect(aiter({ VLLM_ROCM_USE_AITER: '0', PYTORCH_ROCM_ARCH: 'gfx1151' })).toEqual([]);
    expect(aiter({ PYTORCH_ROCM_ARCH: 'gfx1151' })).toEqual([]);
    expect(checkTraps({ index, python: py, distributions: [VLLM_ROCM], env: { VLLM_ROCM_USE_AITER: '1' }, skip: ['aiter'] })).toEqual([]);
  });
});
