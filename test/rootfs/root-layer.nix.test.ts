import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeLayer } from '../helpers/layers.js';
import { loadClosure } from '../../src/nix/closure.js';
import type { Closure } from '../../src/nix/types.js';
import { parseRecipe } from '../../src/recipe/load.js';
import { resolveRecipe } from '../../src/recipe/resolve.js';
import { rootLayerSource } from '../../src/rootfs/root-layer.js';
import { exportClosure, nixBuild } from '../helpers/nix.js';
import { tools } from '../helpers/tools.js';

/*
 * Two store paths that both provide bin/ files, linked into / from a real `nix-store --export`, with a
 * static busybox elsewhere in the closure for /bin/sh and /usr/bin/env. The layer is unpacked with GNU tar
 * over a copy of the closure and run with chroot: the links, the passwd file and the modes must work.
 */
describe.runIf(tools('nix-build', 'nix-store', 'tar', 'chroot'))('image-root layer from a real Nix closure', () => {
  const work = mkdtempSync(join(tmpdir(), 'nix2oci-rootfs-'));
  const rootfs = join(work, 'rootfs');
  let busybox: string;
  let tools1: string;
  let extra: string;
  let env: string;
  let closure: Closure;
  let warnings: string[];

  beforeAll(async () => {
    const [top] = nixBuild(`
      let
        bb = mkDrv "busybox-rootfs-test" ''
          mkdir -p $out/bin
          cp /bin/busybox $out/bin/busybox
          for applet in sh env id cat ls test; do ln -s busybox $out/bin/$applet; done
        '';
        tools = mkDrv "tools-1.0" ''
          mkdir -p $out/bin $out/share/tools $out/nix-support
          printf '#!\${bb}/bin/sh\\necho tool-a\\n' > $out/bin/a
          printf '#!\${bb}/bin/sh\\necho common-from-tools\\n' > $out/bin/common
          chmod +x $out/bin/a $out/bin/common
          echo docs > $out/share/tools/README
          echo hook > $out/nix-support/setup-hook
        '';
        extra = mkDrv "extra-2.0" ''
          mkdir -p $out/bin $out/lib
          printf '#!\${bb}/bin/sh\\necho extra-b\\n' > $out/bin/b
          printf '#!\${bb}/bin/sh\\necho common-from-extra\\n' > $out/bin/common
          chmod +x $out/bin/b $out/bin/common
          echo lib > $out/lib/libextra.txt
        '';
        certs = mkDrv "certs-1.0" ''
          mkdir -p $out/etc/ssl/certs
          echo test-ca > $out/etc/ssl/certs/ca-bundle.crt
        '';
        # Like a buildEnv where one package provides etc: the whole directory is a link.
        env = mkDrv "runtime-env" "mkdir $out; ln -s \${certs}/etc $out/etc";
      in mkDrv "rootfs-test-top" "echo \${tools} \${extra} \${env} > $out"`);
    const paths = exportClosure([top!], join(work, 'test.closure'));
    busybox = paths.find((p) => p.endsWith('-busybox-rootfs-test'))!;
    tools1 = paths.find((p) => p.endsWith('-tools-1.0'))!;
    extra = paths.find((p) => p.endsWith('-extra-2.0'))!;
    env = paths.find((p) => p.endsWith('-runtime-env'))!;
    closure = await loadClosure([join(work, 'test.closure')]);

    const recipe = parseRecipe(
      {
        copyToRoot: ['tools', '{{extra}}', 'runtime-env'],
        users: [{ name: 'app', uid: 1000, gid: 1000 }],
        directories: [{ path: '/data', mode: '0750' }],
      },
      'test recipe',
    );
    const layer = rootLayerSource(closure, resolveRecipe(recipe, closure).root);
    const blob = await writeLayer(layer.source, { compression: 'gzip', dir: work, mtime: 1 });
    warnings = layer.warnings;
    mkdirSync(rootfs);
    execFileSync('tar', ['-xzpf', blob.file, '-C', rootfs]);
  });

  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it('links bin/ of both paths into a real /bin, the earlier path winning the shared file, with a warning', () => {
    expect(lstatSync(join(rootfs, 'bin')).isDirectory()).toBe(true);
    expect(readlinkSync(join(rootfs, 'bin/a'))).toBe(`${tools1}/bin/a`);
    expect(readlinkSync(join(rootfs, 'bin/b'))).toBe(`${extra}/bin/b`);
    expect(readlinkSync(join(rootfs, 'bin/common'))).toBe(`${tools1}/bin/common`);
    expect(warnings).toEqual([`copyToRoot: /bin/common is in both ${tools1} and ${extra}; using ${tools1} (listed first)`]);
  });

  it('links unshared directories whole, leaves nix-support out, and adds /bin/sh and /usr/bin/env from the closure', () => {
    expect(readlinkSync(join(rootfs, 'share'))).toBe(`${tools1}/share`);
    expect(readlinkSync(join(rootfs, 'lib'))).toBe(`${extra}/lib`);
    expect(existsSync(join(rootfs, 'nix-support'))).toBe(false);
    expect(readlinkSync(join(rootfs, 'bin/sh'))).toBe(`${busybox}/bin/sh`);
    expect(readlinkSync(join(rootfs, 'usr/bin/env'))).toBe(`${busybox}/bin/env`);
    // The env's etc link meets /etc and is followed: its ssl is linked through it.
    expect(readlinkSync(join(rootfs, 'etc/ssl'))).toBe(`${env}/etc/ssl`);
    // Every link points at something that exists in the real store.
    const links = execFileSync('find', [rootfs, '-type', 'l'], { encoding: 'utf8' }).split('\n').filter(Boolean);
    expect(links.length).toBe(8);
    for (const link of links) expect(existsSync(readlinkSync(link)), link).toBe(true);
  });

  it('has the modes the image needs', () => {
    const mode = (path: string): number => lstatSync(join(rootfs, path)).mode & 0o7777;
    expect(mode('tmp')).toBe(0o1777);
    expect(mode('root')).toBe(0o700);
    expect(mode('data')).toBe(0o750);
    expect(mode('home/app')).toBe(0o755);
    expect(mode('etc')).toBe(0o755);
    expect(mode('etc/passwd')).toBe(0o644);
    expect(readFileSync(join(rootfs, 'etc/passwd'), 'utf8')).toBe('root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n');
  });

  it('runs: the links resolve, env finds sh, and users resolve through /etc/passwd', () => {
    const store = join(rootfs, 'nix/store');
    mkdirSync(store, { recursive: true });
    execFileSync('cp', ['-a', ...closure.paths.keys(), store]);
    const asRoot = process.getuid?.() === 0 ? [] : ['unshare', '--map-root-user'];
    const [program, ...args] = [
      ...asRoot,
      'chroot',
      rootfs,
      '/bin/sh',
      '-c',
      'PATH=/bin; a; b; common; /usr/bin/env sh -c "echo env-ok"; id -un; id app; test -k /tmp && echo tmp-sticky; read ca < /etc/ssl/certs/ca-bundle.crt; echo $ca',
    ];
    const out = execFileSync(program!, args, { encoding: 'utf8' });
    expect(out.split('\n')).toEqual([
      'tool-a',
      'extra-b',
      'common-from-tools',
      'env-ok',
      'root',
      'uid=1000(app) gid=1000(app) groups=1000(app)',
      'tmp-sticky',
      'test-ca',
      '',
    ]);
  });

  it.runIf(process.getuid?.() === 0)('gives a user their home: a process running as them can write there, not elsewhere', () => {
    // tar -p as root keeps the layer's owners, as a container runtime does (the store was copied in above).
    expect([lstatSync(join(rootfs, 'home/app')).uid, lstatSync(join(rootfs, 'home/app')).gid]).toEqual([1000, 1000]);
    expect(lstatSync(join(rootfs, 'data')).uid).toBe(0);
    const out = execFileSync('chroot', ['--userspec=1000:1000', rootfs, '/bin/sh', '-c', 'echo x > /home/app/cache && echo home-ok; echo x > /data/f 2>/dev/null || echo data-refused'], {
      encoding: 'utf8',
    });
    expect(out).toBe('home-ok\ndata-refused\n');
  });
});
