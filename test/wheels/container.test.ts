import { describe, it, expect, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkWheelTags } from '../../src/wheels/tags.js';
import { wheelLayerSource } from '../../src/wheels/install.js';
import { writeLayerFile } from '../../src/layer/writer.js';
import { readWheelInfo } from '../../src/wheels/wheel-info.js';
import { buildPythonClosure, canBuildPythonClosure } from '../helpers/python-closure.js';
import { tools } from '../helpers/tools.js';
import { makeWheel } from '../helpers/wheels.js';

const scratch: string[] = [];
afterAll(() => {
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
});
function freshDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  scratch.push(dir);
  return dir;
}

const PIP_WHEEL = readdirSync('/usr/share/python-wheels')
  .filter((f) => /^pip-.*\.whl$/.test(f))
  .map((f) => join('/usr/share/python-wheels', f))[0]!;

/**
 * The wheel layers on top of a Nix Python closure with nothing else (no /usr, no /bin): the launchers'
 * shebangs must name the store path's interpreter and the env must make site-packages importable.
 * Run with podman from the exploded layers (`--rootfs`), as a container runtime would see the image.
 */
describe.runIf(tools('podman', 'runc') && canBuildPythonClosure())('wheels installed over a Nix Python, in a container', () => {
  it('runs pip’s launcher, a console script and a #!python data script with the image’s interpreter', async () => {
    const closure = buildPythonClosure();
    const rootfs = freshDir('nix2oci-wheel-rootfs-');
    mkdirSync(join(rootfs, 'nix/store'), { recursive: true });
    execFileSync('cp', ['-a', ...closure.paths, join(rootfs, 'nix/store')]);

    const demo = makeWheel({
      dir: freshDir('nix2oci-wheel-demo-'),
      name: 'demo',
      version: '1.0',
      files: { 'demo/__init__.py': 'import sys\ndef main():\n    print("demo from", __file__, "on", sys.executable)\n' },
      entryPoints: { console_scripts: { 'demo-cli': 'demo:main' } },
      dataScripts: { 'demo-script': '#!python\nimport demo\nprint("script", demo.__name__)\n' },
    });
    const target = { pythonVersion: '3.11', implementation: 'cp', platform: 'linux_x86_64' } as const;
    const install = { prefix: '/opt/python', pythonVersion: '3.11', interpreter: closure.interpreter };
    for (const wheel of [PIP_WHEEL, demo]) {
      const info = await readWheelInfo(wheel);
      checkWheelTags(info, target);
      const layer = wheelLayerSource(info, install);
      expect([layer.sitePackages, layer.binDir]).toEqual(['/opt/python/lib/python3.11/site-packages', '/opt/python/bin']);
      // The writer build-image uses for wheel layers.
      const blob = await writeLayerFile(layer.source, { compression: 'gzip', gzipLevel: 6, mtime: 1 }, freshDir('nix2oci-wheel-layer-'));
      execFileSync('tar', ['-xzf', blob.file, '-C', rootfs]);
    }
    // As the build sets them: site-packages on PYTHONPATH, the wheels' bin before the rest of PATH.
    const env = { PATH: `/opt/python/bin:${closure.root}/bin`, PYTHONPATH: '/opt/python/lib/python3.11/site-packages' };

    const conf = join(freshDir('nix2oci-wheel-conf-'), 'containers.conf');
    writeFileSync(conf, '[containers]\ndefault_ulimits = []\n');
    const run = (...command: string[]) =>
      execFileSync(
        'podman',
        ['--runtime', 'runc', 'run', '--rm', '--network', 'none', ...Object.entries(env).flatMap(([k, v]) => ['--env', `${k}=${v}`]), '--rootfs', rootfs, ...command],
        { encoding: 'utf8', env: { ...process.env, CONTAINERS_CONF: conf }, timeout: 120_000 },
      );

    expect(run('pip', '--version')).toMatch(/^pip 23\.\S+ from \/opt\/python\/lib\/python3\.11\/site-packages\/pip \(python 3\.11\)\n$/);
    expect(run('demo-cli')).toBe(`demo from /opt/python/lib/python3.11/site-packages/demo/__init__.py on ${closure.interpreter}\n`);
    expect(run('demo-script')).toBe('script demo\n');
  });
});
