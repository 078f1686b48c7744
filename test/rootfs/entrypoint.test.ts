import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { TarSink } from '../../src/layer/types.js';
import { rootLayerSource, type RootSpec } from '../../src/rootfs/root-layer.js';
import type { EntrypointSpec } from '../../src/rootfs/entrypoint.js';
import { UserError } from '../../src/util/errors.js';
import { REPO, runCli } from '../helpers/cli.js';
import { useScratchDirs } from '../helpers/scratch.js';
import { fakeClosure, fakeStorePath } from '../recipe/fake-closure.js';
import { FakeNars, type FakeTree } from './fake-nar.js';

/**
 * The program an image runs (entrypoint, else cmd) must be in it, found as a runtime finds it: through
 * the image root's links into the store, links inside store paths, PATH, the wheels' files. Otherwise
 * the build fails (an image that cannot start is no image), unless it may be mounted at run time: in
 * a volume, or with checks.allowMissingEntrypoint, it is a warning.
 */

const busybox = fakeStorePath('busybox-1.36.1');
const app = fakeStorePath('demo-app');
const tools = fakeStorePath('tools');

const trees: Record<string, FakeTree> = {
  [busybox]: { 'bin/busybox': 'exec', 'bin/sh': { link: 'busybox' }, 'bin/ls': { link: '/nix/store/' + busybox.slice(11) + '/bin/busybox' } },
  [app]: {
    'bin/hello': 'exec',
    'bin/readme': 'file',
    'bin/loop-a': { link: 'loop-b' },
    'bin/loop-b': { link: 'loop-a' },
    'bin/run': { link: '../libexec/run' },
    'libexec/run': { link: `${tools}/bin/tool` },
    'share/doc': 'dir',
  },
  [tools]: { 'bin/tool': 'exec' },
};

async function check(entrypoint: Partial<EntrypointSpec> & { program: string }, extra: Partial<RootSpec> = {}): Promise<{ warnings: string[]; error?: string }> {
  const paths = [busybox, app, tools];
  const fake = new FakeNars();
  for (const path of paths) fake.add(path, trees[path]);
  const spec: RootSpec = {
    copyToRoot: [busybox],
    users: [],
    directories: [],
    lowerLayerDirectories: ['/opt/python'],
    entrypoint: { key: 'entrypoint', path: ['/bin', '/usr/bin'], workingDir: '/', volumes: [], allowMissing: false, ...entrypoint },
    ...extra,
  };
  const layer = rootLayerSource(fakeClosure(paths), spec, { walk: fake.walk });
  const sink: TarSink = { add: async () => {} };
  try {
    await layer.source(sink);
  } catch (error) {
    expect(error).toBeInstanceOf(UserError);
    expect((error as Error).message).not.toContain('\n');
    return { warnings: layer.warnings, error: (error as Error).message };
  }
  return { warnings: layer.warnings };
}

describe('the entrypoint check', () => {
  it('finds programs through every kind of link, and on PATH', async () => {
    for (const program of [`${app}/bin/hello`, `${app}/bin/run`, '/bin/sh', '/bin/ls', 'ls', 'sh', `${busybox}/bin/ls`]) {
      expect(await check({ program }), program).toEqual({ warnings: [] });
    }
    expect(await check({ program: './hello', workingDir: `${app}/bin` })).toEqual({ warnings: [] });
  });

  it('fails naming what is missing: a typo in a store path, a path nothing provides, a name not on PATH', async () => {
    expect((await check({ program: `${app}/bin/helo` })).error).toBe(
      `entrypoint ${app}/bin/helo is not in the image: ${app} has no bin/helo (if it is mounted at run time, set checks.allowMissingEntrypoint in the recipe)`,
    );
    expect((await check({ program: '/usr/local/bin/serve' })).error).toBe(
      'entrypoint /usr/local/bin/serve is not in the image: nothing provides /usr (if it is mounted at run time, set checks.allowMissingEntrypoint in the recipe)',
    );
    expect((await check({ program: 'serve', key: 'cmd' })).error).toBe(
      "cmd serve is in none of the image's PATH directories (/bin:/usr/bin) (if it is mounted at run time, set checks.allowMissingEntrypoint in the recipe)",
    );
    expect((await check({ program: '/nix/store/00000000000000000000000000000000-gone/bin/x' })).error).toMatch(/is not in the image: \/nix\/store\/0{32}-gone is not in the closure/);
  });

  it('fails for a directory, a file that is not executable and a loop of links', async () => {
    expect((await check({ program: `${app}/share/doc` })).error).toBe(`entrypoint ${app}/share/doc is a directory`);
    expect((await check({ program: `${app}/bin/readme` })).error).toBe(`entrypoint ${app}/bin/readme is not executable`);
    expect((await check({ program: `${app}/bin/loop-a` })).error).toBe(`entrypoint ${app}/bin/loop-a is a symbolic link that goes round in circles`);
  });

  it('only warns for a program in a volume, or with checks.allowMissingEntrypoint', async () => {
    expect(await check({ program: '/models/serve', volumes: ['/models'] })).toEqual({
      warnings: ['entrypoint /models/serve is not in the image: nothing provides /models; it lies in the volume /models, so it must be mounted there at run time'],
    });
    expect(await check({ program: '/run/secrets/start', allowMissing: true })).toEqual({
      warnings: ['entrypoint /run/secrets/start is not in the image: nothing provides /run; allowed by checks.allowMissingEntrypoint: it must be mounted at run time'],
    });
  });

  it('knows the wheels’ files when told them, and does not guess when not', async () => {
    const wheels = { lowerLayerFiles: ['/opt/python/bin/vllm', '/opt/python/lib/python3.11/site-packages/vllm/__init__.py'] };
    expect(await check({ program: '/opt/python/bin/vllm' }, wheels)).toEqual({ warnings: [] });
    expect(await check({ program: 'vllm', extraPath: ['/opt/python/bin'] }, wheels)).toEqual({ warnings: [] });
    expect((await check({ program: '/opt/python/bin/vlm' }, wheels)).error).toMatch(/^entrypoint \/opt\/python\/bin\/vlm is not in the image: nothing provides \/opt\/python\/bin\/vlm/);
    expect(await check({ program: '/opt/python/bin/vlm' })).toEqual({ warnings: [] });
  });
});

describe('build-image', () => {
  const scratch = useScratchDirs();
  const demo = ['--closure', join(REPO, 'layers/demo/demo.closure'), '--recipe', join(REPO, 'layers/demo/image.json')];

  it('fails in one line, exit 1, with no output, when the entrypoint is not in the image; warns when it may be mounted', () => {
    const dir = scratch('nix2oci-entrypoint-');
    const out = join(dir, 'image.tar');
    const typo = runCli(['build-image', '-q', ...demo, '--entrypoint', '["{{demo-app}}/bin/helo"]', '--no-cache', '--output', out]);
    expect(typo.code).toBe(1);
    expect(typo.stderr).toMatch(/^nix2oci: entrypoint \/nix\/store\/[0-9a-z]{32}-demo-app\/bin\/helo is not in the image: \/nix\/store\/[0-9a-z]{32}-demo-app has no bin\/helo \(if it is mounted at run time, set checks\.allowMissingEntrypoint in the recipe\)\n$/);
    expect(existsSync(out)).toBe(false);

    const recipe = join(dir, 'mounted.json');
    writeFileSync(recipe, JSON.stringify({ entrypoint: ['/opt/tool/run'], checks: { allowMissingEntrypoint: true } }));
    const mounted = runCli(['build-image', '-q', '--closure', join(REPO, 'layers/demo/demo.closure'), '--recipe', recipe, '--no-cache', '--output', out]);
    expect(mounted.code, mounted.stderr).toBe(0);
    expect(mounted.stderr).toBe('warning: entrypoint /opt/tool/run is not in the image: nothing provides /opt; allowed by checks.allowMissingEntrypoint: it must be mounted at run time\n');
    expect(existsSync(out)).toBe(true);
  });
});
