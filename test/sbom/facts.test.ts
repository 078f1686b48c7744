import { describe, expect, it } from 'vitest';
import { parseDrvName, readWheelMetadata, storePathPurl, uuidFrom, wheelPurl } from '../../src/sbom/facts.js';
import { storePathOf } from '../../src/nix/store-path.js';
import { artifactOf, EMPTY_CONFIG_DESCRIPTOR, parseArtifactManifest, referrersIndex, referrersTag } from '../../src/model/artifact.js';
import { servingDistributions } from '../../src/wheels/checks/requirements.js';
import { markerEnvironment } from '../../src/wheels/checks/requirements.js';

describe('store path names, as Nix splits them', () => {
  it.each([
    ['python3-3.11.9', 'python3', '3.11.9'],
    ['bash-interactive-5.2p26', 'bash-interactive', '5.2p26'],
    ['gcc-13.2.0-lib', 'gcc', '13.2.0-lib'],
    ['glibc-debian-2.36', 'glibc-debian', '2.36'],
    ['demo-app', 'demo-app', null],
    ['source', 'source', null],
  ])('%s → %s %s', (full, name, version) => {
    expect(parseDrvName(full)).toEqual({ name, version });
  });

  it('gives purls scanners read: pkg:nix for store paths (no version when the name has none), pkg:pypi normalised', () => {
    expect(storePathPurl({ name: 'python3', version: '3.11.9' })).toBe('pkg:nix/python3@3.11.9');
    expect(storePathPurl({ name: 'demo-app', version: null })).toBe('pkg:nix/demo-app');
    expect(wheelPurl({ name: 'Typing_Extensions', version: '4.12.2' })).toBe('pkg:pypi/typing-extensions@4.12.2');
  });
});

describe("a wheel's METADATA", () => {
  const read = (lines: string[]) => {
    const warnings: string[] = [];
    return { ...readWheelMetadata(['Metadata-Version: 2.4', 'Name: x', 'Version: 1', ...lines, '', 'body'].join('\n'), 'x-1-py3-none-any.whl', (w) => warnings.push(w)), warnings };
  };
  it('takes License-Expression, else a License that is an SPDX expression or a short name', () => {
    expect(read(['License-Expression: Apache-2.0 WITH LLVM-exception'])).toEqual({ license: { expression: 'Apache-2.0 WITH LLVM-exception' }, warnings: [] });
    expect(read(['License: MIT'])).toEqual({ license: { expression: 'MIT' }, warnings: [] });
    expect(read(['License: BSD License', 'Summary: s'])).toEqual({ license: { name: 'BSD License' }, summary: 's', warnings: [] });
    expect(read(['License: UNKNOWN'])).toEqual({ warnings: [] });
  });
  it('leaves out, with a warning each, a License-Expression that is none, a license text, METADATA without fields or not UTF-8', () => {
    expect(read(['License-Expression: GPL-2.0+ OR']).warnings).toEqual([expect.stringMatching(/License-Expression "GPL-2.0\+ OR" is not an SPDX expression; left out$/)]);
    expect(read(['License: Copyright 2024', '   All rights reserved.']).warnings).toEqual([expect.stringMatching(/neither an SPDX expression nor a license name/)]);
    const warnings: string[] = [];
    expect(readWheelMetadata('\n\nnot a header\n', 'y.whl', (w) => warnings.push(w))).toEqual({});
    expect(readWheelMetadata('Name: z\nSummary: caf\uFFFD\n', 'z.whl', (w) => warnings.push(w))).toEqual({});
    expect(warnings).toEqual([expect.stringMatching(/^SBOM: y\.whl: METADATA has no readable fields/), expect.stringMatching(/^SBOM: z\.whl: METADATA is not valid UTF-8/)]);
  });
});

describe('requirements resolved in the image', () => {
  it('points a requirement at the wheel or the closure path serving it; extras that do not apply are left out', () => {
    const closureDist = { name: 'six', version: '1.16', requiresDist: [], source: '/nix/store/0000000000000000000000000000000a-python3.11-six-1.16/lib/python3.11/site-packages/six-1.16.dist-info/METADATA', wheel: false };
    const served = servingDistributions({
      wheels: [
        { name: 'app', version: '1', requiresDist: ['lib>=1', 'six', 'missing', 'extra-thing; extra == "x"', 'win; sys_platform == "win32"'], source: 'app.whl', wheel: true },
        { name: 'lib', version: '2', requiresDist: [], source: 'lib.whl', wheel: true },
      ],
      closureDistributions: [closureDist],
      environment: markerEnvironment({ version: '3.11', fullVersion: '3.11.2' }),
    });
    expect(served.get('app')!.map((r) => [r.requirement, r.by?.source ?? null])).toEqual([
      ['lib>=1', 'lib.whl'],
      ['six', closureDist.source],
      ['missing', null],
    ]);
    expect(storePathOf(closureDist.source)).toBe('/nix/store/0000000000000000000000000000000a-python3.11-six-1.16');
  });
});

describe('artifacts', () => {
  const subject = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${'a'.repeat(64)}`, size: 123 };
  it('are OCI 1.1 artifact manifests: empty config, the document as the one layer, the image as subject; same input, same bytes', () => {
    const one = artifactOf({ artifactType: 'application/spdx+json', document: Buffer.from('{}'), subject });
    const two = artifactOf({ artifactType: 'application/spdx+json', document: Buffer.from('{}'), subject });
    expect(one.manifestBytes).toEqual(two.manifestBytes);
    const parsed = parseArtifactManifest(one.manifestBytes, 'x');
    expect(parsed).toEqual({ artifactType: 'application/spdx+json', config: EMPTY_CONFIG_DESCRIPTOR, layers: [one.blobs[1]!.descriptor], subject });
    expect(EMPTY_CONFIG_DESCRIPTOR.digest).toBe('sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a');
    expect(JSON.parse(referrersIndex([one.descriptor]).toString()).manifests[0]).toMatchObject({ digest: one.descriptor.digest, artifactType: 'application/spdx+json' });
    expect(referrersTag(subject.digest)).toBe(`sha256-${'a'.repeat(64)}`);
  });
  it('give one different serial number per image', () => {
    expect(uuidFrom('a')).toBe(uuidFrom('a'));
    expect(uuidFrom('a')).not.toBe(uuidFrom('b'));
    expect(uuidFrom('a')).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });
});
