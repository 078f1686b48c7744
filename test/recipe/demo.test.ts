import { describe, expect, it } from 'vitest';
import { loadClosure } from '../../src/nix/closure.js';
import { loadRecipe } from '../../src/recipe/load.js';
import { applyOverrides } from '../../src/recipe/overrides.js';
import { resolveRecipe, toImageConfigSpec } from '../../src/recipe/resolve.js';
import { rootLayerSource } from '../../src/rootfs/root-layer.js';
import { tarStreamList, tarToBuffer } from '../tar/tar-tools.js';

/** The demo recipe against the demo closure the repository ships (no Nix needed). */
describe('the demo recipe', () => {
  it('resolves against the demo closure into the config and image root the demo needs', async () => {
    const closure = await loadClosure(['layers/demo/demo.closure'], { pathInfoFile: 'layers/demo/demo.path-info.json' });
    const byName = (suffix: string): string => [...closure.paths.keys()].find((p) => p.endsWith(`-${suffix}`))!;
    const recipe = applyOverrides(loadRecipe('layers/demo/image.json'), { env: ['GREETING=hi'] });
    const resolved = resolveRecipe(recipe, closure, 'layers/demo/image.json');

    expect(resolved.tags).toEqual(['nix2oci/demo:latest']);
    expect(toImageConfigSpec(resolved)).toEqual({
      architecture: 'amd64',
      os: 'linux',
      env: ['GREETING=hi', 'PATH=/bin'],
      entrypoint: [`${byName('demo-app')}/bin/hello`],
      exposedPorts: ['8000/tcp'],
      volumes: ['/data'],
      labels: {
        'org.opencontainers.image.title': 'nix2oci demo',
        'org.opencontainers.image.description': 'A static busybox and a small app from a Nix closure, built without Nix or Docker',
      },
    });

    const layer = rootLayerSource(closure, resolved.root);
    const entries = await tarStreamList(await tarToBuffer(layer.source));
    const busybox = byName('busybox-demo');
    expect(entries.map((e) => [e.name, e.type === 'symlink' ? e.target : (e.mode & 0o7777).toString(8)])).toEqual([
      ['bin', `${busybox}/bin`],
      ['data', '755'],
      ['etc', '755'],
      ['etc/group', '644'],
      ['etc/nsswitch.conf', '644'],
      ['etc/passwd', '644'],
      ['root', '700'],
      ['tmp', '1777'],
      ['usr', '755'],
      ['usr/bin', '755'],
      ['usr/bin/env', `${busybox}/bin/env`],
    ]);
    expect(layer.warnings).toEqual([]);
  });
});
