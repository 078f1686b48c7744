import { beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { cliOk } from '../helpers/cli.js';
import { buildPythonClosure, canBuildPythonClosure, exportPythonClosure, type PythonClosure } from '../helpers/python-closure.js';
import { useScratchDirs } from '../helpers/scratch.js';
import { tools } from '../helpers/tools.js';
import { makeWheel } from '../helpers/wheels.js';
import { cyclonedxErrors, spdxErrors } from '../helpers/sbom-validate.js';

const ready = tools('nix-build', 'nix-store', 'patchelf') && canBuildPythonClosure();
const scratch = useScratchDirs();

interface CdxDoc {
  components: Array<{ 'bom-ref': string; name: string; version?: string; purl: string; hashes?: { content: string }[]; licenses?: Array<{ expression?: string; license?: { name?: string; id?: string } }>; properties?: { name: string; value: string }[] }>;
  dependencies: Array<{ ref: string; dependsOn?: string[] }>;
}

describe.runIf(ready)('SBOM of an image with a Nix Python closure and wheels', () => {
  let dir: string;
  let python: PythonClosure;
  let wheels: Record<string, string>;
  let spdx: string;
  let cdx: CdxDoc;
  let cdxText: string;
  let warnings: string;

  beforeAll(() => {
    dir = scratch('nix2oci-wheel-sbom-');
    python = buildPythonClosure();
    const { closureFile, pathInfoFile } = exportPythonClosure(python, join(dir, 'runtime'));
    wheels = {
      alpha: makeWheel({ dir, name: 'alpha', version: '1.0', requires: ['beta>=1.0', 'gamma; extra == "fast"'], providesExtra: ['fast'], metadataLines: ['License-Expression: MIT OR Apache-2.0', 'Summary: the first'], files: { 'alpha/__init__.py': '' } }),
      beta: makeWheel({ dir, name: 'beta', version: '2.1', metadataLines: ['License: BSD License', 'Home-page: https://example.org/beta'], files: { 'beta/__init__.py': '' } }),
      // Bad input: a License-Expression that is none, and a whole license text pasted into License.
      broken: makeWheel({
        dir,
        name: 'broken',
        version: '0.1',
        metadataLines: ['License-Expression: MIT AND (', 'License: Copyright (c) somebody', '        Permission is hereby granted, free of charge, to any person'],
        files: { 'broken/__init__.py': '' },
      }),
    };
    mkdirSync(join(dir, 'docs'));
    const result = cliOk(
      ['build-image', '--closure', closureFile, '--path-info', pathInfoFile, ...Object.values(wheels).flatMap((w) => ['--wheel', w]), '--output', join(dir, 'image.tar'), '--sbom', 'both', '--sbom-dir', join(dir, 'docs'), '--no-cache'],
      { env: { SOURCE_DATE_EPOCH: '1700000000' } },
    );
    warnings = result.stderr;
    spdx = readFileSync(join(dir, 'docs/sbom.spdx.json'), 'utf8');
    cdxText = readFileSync(join(dir, 'docs/sbom.cdx.json'), 'utf8');
    cdx = JSON.parse(cdxText) as CdxDoc;
  });

  it('lists exactly the store paths `nix-store -qR` gives, each with the sha256 of its NAR as `nix-store --dump` makes it', () => {
    const closure = execFileSync('nix-store', ['-qR', python.root], { encoding: 'utf8' }).trim().split('\n').sort();
    const storePaths = cdx.components.filter((c) => c.purl.startsWith('pkg:nix/'));
    expect(storePaths.map((c) => c['bom-ref']).sort()).toEqual(closure);
    for (const path of closure) {
      const nar = execFileSync('nix-store', ['--dump', path], { maxBuffer: 1 << 30 });
      expect(storePaths.find((c) => c['bom-ref'] === path)!.hashes![0]!.content, path).toBe(createHash('sha256').update(nar).digest('hex'));
      const references = execFileSync('nix-store', ['-q', '--references', path], { encoding: 'utf8' }).trim().split('\n').filter((r) => r !== '' && r !== path).sort();
      expect(cdx.dependencies.find((d) => d.ref === path)?.dependsOn?.sort() ?? []).toEqual(references);
    }
    // Name and version as Nix splits them.
    expect(storePaths.find((c) => c['bom-ref'] === python.python)).toMatchObject({ name: 'python3', purl: expect.stringMatching(/^pkg:nix\/python3@3\.11\./) });
  });

  it('lists every wheel given, with its pypi purl, the sha256 of the wheel file, its license, and its requirements as resolved in the image', () => {
    const listed = cdx.components.filter((c) => c.purl.startsWith('pkg:pypi/'));
    expect(listed.map((c) => c.purl).sort()).toEqual(['pkg:pypi/alpha@1.0', 'pkg:pypi/beta@2.1', 'pkg:pypi/broken@0.1']);
    for (const [name, file] of Object.entries(wheels)) {
      const component = listed.find((c) => c.name === name)!;
      expect(component.hashes![0]!.content).toBe(createHash('sha256').update(readFileSync(file)).digest('hex'));
    }
    expect(listed.find((c) => c.name === 'alpha')!.licenses).toEqual([{ expression: 'MIT OR Apache-2.0' }]);
    expect(listed.find((c) => c.name === 'beta')!.licenses).toEqual([{ license: { name: 'BSD License' } }]);
    expect(listed.find((c) => c.name === 'broken')!.licenses ?? []).toEqual([]);
    // alpha requires beta (served by the beta wheel); its `fast` extra's gamma does not apply.
    expect(cdx.dependencies.find((d) => d.ref === 'pkg:pypi/alpha@1.0')?.dependsOn).toEqual(['pkg:pypi/beta@2.1']);
    const spdxDoc = JSON.parse(spdx) as { packages: { SPDXID: string; licenseDeclared?: string }[]; relationships: { spdxElementId: string; relationshipType: string; relatedSpdxElement: string }[] };
    expect(spdxDoc.relationships).toContainEqual({ spdxElementId: 'SPDXRef-Wheel-alpha', relationshipType: 'DEPENDS_ON', relatedSpdxElement: 'SPDXRef-Wheel-beta' });
    expect(spdxDoc.packages.find((p) => p.SPDXID === 'SPDXRef-Wheel-alpha')!.licenseDeclared).toBe('MIT OR Apache-2.0');
  });

  it('leaves out what it cannot read, with a warning for each, and both documents stay valid', async () => {
    expect(warnings).toMatch(/warning: SBOM: broken-0\.1-py3-none-any\.whl: License-Expression "MIT AND \(" is not an SPDX expression; left out/);
    expect(warnings).toMatch(/warning: SBOM: broken-0\.1-py3-none-any\.whl: the License field is neither an SPDX expression nor a license name/);
    expect(spdxErrors(spdx)).toBeNull();
    expect(await cyclonedxErrors(cdxText)).toBeNull();
  });
});
