import { describe, expect, it } from 'vitest';
import type { TarEntry, TarSink } from '../../src/layer/types.js';
import { rootLayerSource, type RootSpec } from '../../src/rootfs/root-layer.js';
import { findEntries, type NarWalker } from '../../src/rootfs/store-tree.js';
import type { NarNode } from '../../src/nix/types.js';
import { mattersToIndex } from '../../src/wheels/checks/closure-index.js';
import { UserError } from '../../src/util/errors.js';
import { tarStreamList, tarToBuffer } from '../tar/tar-tools.js';
import { fakeClosure, fakeStorePath } from '../recipe/fake-closure.js';
import { FakeNars, type FakeTree } from './fake-nar.js';

const busybox = fakeStorePath('busybox-1.36.1');
const coreutils = fakeStorePath('coreutils-9.5');
const bash = fakeStorePath('bash-5.2p26');
const dash = fakeStorePath('dash-0.5.12', 'sorts before bash by hash?');
const python = fakeStorePath('python3-3.11.9');
const cacert = fakeStorePath('nss-cacert-3.101');
const app = fakeStorePath('demo-app');

const trees: Record<string, FakeTree> = {
  [busybox]: { 'bin/busybox': 'file', 'bin/sh': { link: 'busybox' }, 'bin/env': { link: 'busybox' }, 'bin/ls': { link: 'busybox' } },
  [coreutils]: { 'bin/env': 'file', 'bin/ls': 'file', 'bin/cat': 'file', 'libexec/coreutils/libstdbuf.so': 'file', 'share/man/man1/ls.1.gz': 'file' },
  [bash]: { 'bin/bash': 'file', 'bin/sh': { link: 'bash' }, 'share/doc/bash/README': 'file' },
  [dash]: { 'bin/dash': 'file', 'bin/sh': { link: 'dash' } },
  [python]: { 'bin/python3': { link: 'python3.11' }, 'bin/python3.11': 'file', 'lib/python3.11/os.py': 'file', 'nix-support/setup-hook': 'file' },
  [cacert]: { 'etc/ssl/certs/ca-bundle.crt': 'file', 'etc/passwd': 'file' },
  [app]: { 'bin/hello': 'file', 'data/seed.txt': 'file' },
};

function nars(paths: string[]): FakeNars {
  const fake = new FakeNars();
  for (const path of paths) fake.add(path, trees[path]);
  return fake;
}

function spec(partial: Partial<RootSpec> = {}): RootSpec {
  return { copyToRoot: [], users: [], directories: [], ...partial };
}

type Listed = { name: string; type: string; mode?: number; target?: string; body?: string; owner?: string };

/** The layer's entries as a tar reader sees them (through the real tar writer). */
async function layerEntries(paths: string[], rootSpec: RootSpec, fake = nars(paths)): Promise<{ entries: Listed[]; warnings: string[] }> {
  const layer = rootLayerSource(fakeClosure(paths), rootSpec, { walk: fake.walk });
  const tar = await tarToBuffer(layer.source);
  const entries = (await tarStreamList(tar)).map((e) => ({
    name: e.name,
    type: e.type,
    ...(e.type === 'symlink' ? { target: e.target } : { mode: e.mode }),
    ...(e.type === 'file' && { body: e.body.toString() }),
    ...((e.uid !== 0 || e.gid !== 0) && { owner: `${e.uid}:${e.gid}` }),
  }));
  return { entries, warnings: layer.warnings };
}

const base: Listed[] = [
  { name: 'etc', type: 'directory', mode: 0o755 },
  { name: 'etc/group', type: 'file', mode: 0o644, body: 'root:x:0:\n' },
  { name: 'etc/nsswitch.conf', type: 'file', mode: 0o644, body: 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' },
  { name: 'etc/passwd', type: 'file', mode: 0o644, body: 'root:x:0:0:root:/root:/bin/sh\n' },
  { name: 'root', type: 'directory', mode: 0o700 },
  { name: 'tmp', type: 'directory', mode: 0o1777 },
];

describe('rootLayerSource', () => {
  it('holds /etc, /root and /tmp (1777) when there is nothing to link', async () => {
    const { entries, warnings } = await layerEntries([app], spec());
    expect(entries).toEqual(base);
    expect(warnings).toEqual([]);
  });

  it('reports its contents for inspect', () => {
    expect(rootLayerSource(fakeClosure([]), spec()).contents).toEqual(['image-root']);
  });

  it('links a directory only one store path has as a whole, and adds /usr/bin/env from it', async () => {
    const { entries } = await layerEntries([busybox], spec({ copyToRoot: [busybox] }));
    expect(entries).toEqual([
      { name: 'bin', type: 'symlink', target: `${busybox}/bin` },
      ...base,
      { name: 'usr', type: 'directory', mode: 0o755 },
      { name: 'usr/bin', type: 'directory', mode: 0o755 },
      { name: 'usr/bin/env', type: 'symlink', target: `${busybox}/bin/env` },
    ]);
  });

  it('merges directories several store paths have; on a collision the earlier path wins and one warning names both', async () => {
    const { entries, warnings } = await layerEntries([coreutils, busybox], spec({ copyToRoot: [coreutils, busybox] }));
    expect(entries).toEqual([
      { name: 'bin', type: 'directory', mode: 0o755 },
      { name: 'bin/busybox', type: 'symlink', target: `${busybox}/bin/busybox` },
      { name: 'bin/cat', type: 'symlink', target: `${coreutils}/bin/cat` },
      { name: 'bin/env', type: 'symlink', target: `${coreutils}/bin/env` },
      { name: 'bin/ls', type: 'symlink', target: `${coreutils}/bin/ls` },
      { name: 'bin/sh', type: 'symlink', target: `${busybox}/bin/sh` },
      ...base.slice(0, 4),
      { name: 'libexec', type: 'symlink', target: `${coreutils}/libexec` },
      base[4],
      { name: 'share', type: 'symlink', target: `${coreutils}/share` },
      base[5],
      { name: 'usr', type: 'directory', mode: 0o755 },
      { name: 'usr/bin', type: 'directory', mode: 0o755 },
      { name: 'usr/bin/env', type: 'symlink', target: `${coreutils}/bin/env` },
    ]);
    expect(warnings).toEqual([`copyToRoot: /bin/env, /bin/ls are in both ${coreutils} and ${busybox}; using ${coreutils} (listed first)`]);
  });

  it('counts collisions past the first three and reports the order the recipe gave', async () => {
    const { warnings } = await layerEntries([coreutils, busybox], spec({ copyToRoot: [busybox, coreutils] }));
    expect(warnings).toEqual([`copyToRoot: /bin/env, /bin/ls are in both ${busybox} and ${coreutils}; using ${busybox} (listed first)`]);
    const many = new FakeNars()
      .add(busybox, { 'bin/a': 'file', 'bin/b': 'file', 'bin/c': 'file', 'bin/d': 'file', 'bin/e': 'file' })
      .add(coreutils, { 'bin/a': 'file', 'bin/b': 'file', 'bin/c': 'file', 'bin/d': 'file', 'bin/e': 'file' });
    const result = await layerEntries([busybox, coreutils], spec({ copyToRoot: [busybox, coreutils] }), many);
    expect(result.warnings).toEqual([
      `copyToRoot: /bin/a, /bin/b, /bin/c and 2 more are in both ${busybox} and ${coreutils}; using ${busybox} (listed first)`,
    ]);
  });

  it('keeps its own /etc files over a store path’s and links the rest of that /etc; nix-support is left out', async () => {
    const { entries, warnings } = await layerEntries([cacert, python], spec({ copyToRoot: [cacert, python] }));
    expect(entries.map((e) => [e.name, e.type, e.target ?? ''])).toEqual([
      ['bin', 'symlink', `${python}/bin`],
      ['etc', 'directory', ''],
      ['etc/group', 'file', ''],
      ['etc/nsswitch.conf', 'file', ''],
      ['etc/passwd', 'file', ''],
      ['etc/ssl', 'symlink', `${cacert}/etc/ssl`],
      ['lib', 'symlink', `${python}/lib`],
      ['root', 'directory', ''],
      ['tmp', 'directory', ''],
    ]);
    expect(entries.find((e) => e.name === 'etc/passwd')?.body).toBe('root:x:0:0:root:/root:/bin/sh\n');
    expect(warnings).toEqual([`copyToRoot: /etc/passwd of ${cacert} left out: nix2oci writes it itself`]);
  });

  it('writes users, groups, homes and the recipe’s directories, merging a store path’s directory into them', async () => {
    const users = [
      { name: 'app', uid: 1000, gid: 1000, group: 'app', home: '/home/app', shell: '/bin/sh' },
      { name: 'gpu', uid: 1001, gid: 44, group: 'video', home: '/srv/gpu', shell: '/bin/bash' },
      { name: 'worker', uid: 1002, gid: 1000, group: 'app', home: '/home/worker', shell: '/bin/sh' },
      { name: 'svc', uid: 999, gid: 999, group: 'svc', home: '/', shell: '/bin/false' },
    ];
    const directories = [
      { path: '/data', mode: 0o750 },
      { path: '/models/cache', mode: 0o1777 },
      { path: '/tmp', mode: 0o1777 },
    ];
    const { entries } = await layerEntries([app], spec({ copyToRoot: [app], users, directories }));
    expect(entries).toEqual([
      { name: 'bin', type: 'symlink', target: `${app}/bin` },
      { name: 'data', type: 'directory', mode: 0o750 },
      { name: 'data/seed.txt', type: 'symlink', target: `${app}/data/seed.txt` },
      base[0],
      { name: 'etc/group', type: 'file', mode: 0o644, body: 'root:x:0:\napp:x:1000:\nvideo:x:44:\nsvc:x:999:\n' },
      base[2],
      {
        name: 'etc/passwd',
        type: 'file',
        mode: 0o644,
        body:
          'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\ngpu:x:1001:44:gpu:/srv/gpu:/bin/bash\n' +
          'worker:x:1002:1000:worker:/home/worker:/bin/sh\nsvc:x:999:999:svc:/:/bin/false\n',
      },
      { name: 'home', type: 'directory', mode: 0o755 },
      // Homes belong to their users (a service running as one writes its caches there); the rest to root.
      { name: 'home/app', type: 'directory', mode: 0o755, owner: '1000:1000' },
      { name: 'home/worker', type: 'directory', mode: 0o755, owner: '1002:1000' },
      { name: 'models', type: 'directory', mode: 0o755 },
      { name: 'models/cache', type: 'directory', mode: 0o1777 },
      base[4],
      { name: 'srv', type: 'directory', mode: 0o755 },
      { name: 'srv/gpu', type: 'directory', mode: 0o755, owner: '1001:44' },
      base[5],
    ]);
  });

  it('links /bin/sh and /usr/bin/env from the closure when copyToRoot lacks them: sh before bash, by store path name', async () => {
    // dash sorts after bash by name: bash's sh wins whatever the hashes.
    const paths = [python, dash, bash, coreutils, busybox];
    const { entries } = await layerEntries(paths, spec({ copyToRoot: [python] }));
    expect(entries.filter((e) => e.type === 'symlink' || e.name === 'bin' || e.name.startsWith('usr'))).toEqual([
      { name: 'bin', type: 'directory', mode: 0o755 },
      { name: 'bin/python3', type: 'symlink', target: `${python}/bin/python3` },
      { name: 'bin/python3.11', type: 'symlink', target: `${python}/bin/python3.11` },
      { name: 'bin/sh', type: 'symlink', target: `${bash}/bin/sh` },
      { name: 'lib', type: 'symlink', target: `${python}/lib` },
      { name: 'usr', type: 'directory', mode: 0o755 },
      { name: 'usr/bin', type: 'directory', mode: 0o755 },
      { name: 'usr/bin/env', type: 'symlink', target: `${busybox}/bin/env` },
    ]);
  });

  it('takes /bin/sh and /usr/bin/env from listings noted as the export was read: the same layer, no NAR read for them', async () => {
    const paths = [python, dash, bash, coreutils, busybox];
    const fake = nars(paths);
    const listings = new Map<string, NarNode[]>();
    for (const path of paths) {
      const nodes: NarNode[] = [];
      const note = (node: NarNode) => void (mattersToIndex(node) && nodes.push(node));
      await fake.walk(fakeClosure(paths).paths.get(path)!, { directory: note, regular: note, symlink: note });
      listings.set(path, nodes);
    }
    const walked: string[] = [];
    const walk: NarWalker = (info, visitor) => {
      walked.push(info.path);
      return fake.walk(info, visitor);
    };
    const listed = rootLayerSource(fakeClosure(paths), spec({ copyToRoot: [python] }), { walk, listed: (info) => listings.get(info.path) });
    const walkedAll = rootLayerSource(fakeClosure(paths), spec({ copyToRoot: [python] }), { walk: fake.walk });
    expect(await tarToBuffer(listed.source)).toEqual(await tarToBuffer(walkedAll.source));
    // Only the copyToRoot path's tree is read; the search for sh and env reads none.
    expect([...new Set(walked)]).toEqual([python]);
  });

  it('prefers a copyToRoot bash over an sh elsewhere, and falls back to bash when no path has sh', async () => {
    const bashOnly = fakeStorePath('bash-interactive-5.2p26');
    const fake = nars([busybox]).add(bashOnly, { 'bin/bash': 'file' });
    const chosen = await layerEntries([busybox, bashOnly], spec({ copyToRoot: [bashOnly] }), fake);
    expect(chosen.entries.find((e) => e.name === 'bin/sh')).toEqual({ name: 'bin/sh', type: 'symlink', target: `${bashOnly}/bin/bash` });

    const fallback = await layerEntries([bashOnly, app], spec(), nars([app]).add(bashOnly, { 'bin/bash': 'file' }));
    expect(fallback.entries.find((e) => e.name === 'bin/sh')).toEqual({ name: 'bin/sh', type: 'symlink', target: `${bashOnly}/bin/bash` });
    expect(fallback.entries.find((e) => e.name.startsWith('usr'))).toBeUndefined();
  });

  it('looks through a store path’s /bin link to add /bin/sh beside its entries; adds none when /bin is a file or leads outside', async () => {
    const usrmerge = fakeStorePath('usrmerge');
    const binFile = fakeStorePath('bin-file');
    const binOutside = fakeStorePath('bin-outside');
    const fake = nars([busybox])
      .add(usrmerge, { bin: { link: 'usr/bin' }, 'usr/bin/true': 'file' })
      .add(binFile, { bin: 'file' })
      .add(binOutside, { bin: { link: '/usr/bin' } });
    const paths = [usrmerge, binFile, binOutside, busybox];
    const merged = await layerEntries(paths, spec({ copyToRoot: [usrmerge] }), fake);
    expect(merged.entries.filter((e) => e.name.includes('bin'))).toEqual([
      { name: 'bin', type: 'directory', mode: 0o755 },
      { name: 'bin/sh', type: 'symlink', target: `${busybox}/bin/sh` },
      { name: 'bin/true', type: 'symlink', target: `${usrmerge}/bin/true` },
      { name: 'usr/bin', type: 'directory', mode: 0o755 },
      { name: 'usr/bin/env', type: 'symlink', target: `${busybox}/bin/env` },
      { name: 'usr/bin/true', type: 'symlink', target: `${usrmerge}/usr/bin/true` },
    ]);
    for (const path of [binFile, binOutside]) {
      const { entries } = await layerEntries(paths, spec({ copyToRoot: [path] }), fake);
      expect(entries.find((e) => e.name === 'bin')).toEqual({ name: 'bin', type: 'symlink', target: `${path}/bin` });
      expect(entries.find((e) => e.name === 'bin/sh')).toBeUndefined();
    }
  });

  it('follows a buildEnv-style link to a directory where it meets a directory, as buildEnv does', async () => {
    const other = fakeStorePath('other-etc');
    const env = fakeStorePath('runtime-env');
    const fake = nars([cacert, bash])
      .add(other, { 'etc/profile': 'file' })
      .add(env, { etc: { link: `${cacert}/etc` }, 'bin/sh': { link: `${bash}/bin/sh` }, lib: { link: 'lib64' }, 'lib64/libc.so.6': 'file' });
    const libz = fakeStorePath('zlib-1.3');
    fake.add(libz, { 'lib/libz.so.1': 'file' });
    const otherEnv = fakeStorePath('other-env');
    fake.add(otherEnv, { etc: { link: `${other}/etc` } });
    const paths = [cacert, bash, other, env, libz, otherEnv];
    const { entries, warnings } = await layerEntries(paths, spec({ copyToRoot: [env, libz, otherEnv] }), fake);
    expect(entries.filter((e) => e.type === 'symlink' || e.type === 'directory').map((e) => [e.name, e.target ?? ''])).toEqual([
      ['bin', `${env}/bin`],
      ['etc', ''],
      ['etc/profile', `${otherEnv}/etc/profile`],
      ['etc/ssl', `${env}/etc/ssl`],
      ['lib', ''],
      ['lib/libc.so.6', `${env}/lib/libc.so.6`],
      ['lib/libz.so.1', `${libz}/lib/libz.so.1`],
      ['lib64', `${env}/lib64`],
      ['root', ''],
      ['tmp', ''],
    ]);
    // cacert's etc/passwd comes through the link and still loses to nix2oci's own.
    expect(warnings).toEqual([`copyToRoot: /etc/passwd of ${env} left out: nix2oci writes it itself`]);
  });

  it('does not follow links that loop, leave the closure or end at a file; the earlier entry wins', async () => {
    const loop = fakeStorePath('loop');
    const outside = fakeStorePath('outside');
    const toFile = fakeStorePath('to-file');
    const fake = nars([app])
      .add(loop, { etc: { link: 'etc' } })
      .add(outside, { etc: { link: '/etc' } })
      .add(toFile, { etc: { link: `${app}/bin/hello` } });
    const paths = [app, loop, outside, toFile];
    const { entries, warnings } = await layerEntries(paths, spec({ copyToRoot: [loop, outside, toFile] }), fake);
    expect(entries).toEqual(base);
    expect(warnings).toEqual([loop, outside, toFile].map((p) => `copyToRoot: /etc of ${p} left out: nix2oci writes it itself`));
  });

  it('keeps directories lower layers fill real, so no link hides them, and never covers /nix', async () => {
    const opt = fakeStorePath('opt-tools');
    const optLink = fakeStorePath('opt-link');
    const fake = new FakeNars()
      .add(opt, { 'opt/tools/bin/t': 'file', 'opt/python/README': 'file', 'nix/store/x': 'file' })
      .add(optLink, { opt: { link: '/somewhere' } });
    const kept = await layerEntries([opt], spec({ copyToRoot: [opt], lowerLayerDirectories: ['/opt/python'] }), fake);
    expect(kept.entries.filter((e) => e.name.startsWith('opt') || e.name.startsWith('nix'))).toEqual([
      { name: 'opt', type: 'directory', mode: 0o755 },
      { name: 'opt/python', type: 'directory', mode: 0o755 },
      { name: 'opt/python/README', type: 'symlink', target: `${opt}/opt/python/README` },
      { name: 'opt/tools', type: 'symlink', target: `${opt}/opt/tools` },
    ]);
    expect(kept.warnings).toEqual([`copyToRoot: /nix of ${opt} left out: it would cover the Nix store`]);

    const dropped = await layerEntries([optLink], spec({ copyToRoot: [optLink], lowerLayerDirectories: ['/opt/python'] }), fake);
    expect(dropped.entries.find((e) => e.name === 'opt')).toBeUndefined();
    expect(dropped.warnings).toEqual([`copyToRoot: /opt of ${optLink} left out: a lower layer (the wheels) fills it`]);

    // A link to a directory on the way is opened instead of dropped.
    const env = fakeStorePath('env-with-opt');
    fake.add(env, { opt: { link: `${opt}/opt` } });
    const opened = await layerEntries([opt, env], spec({ copyToRoot: [env], lowerLayerDirectories: ['/opt/python'] }), fake);
    expect(opened.entries.filter((e) => e.name.startsWith('opt'))).toEqual([
      { name: 'opt', type: 'directory', mode: 0o755 },
      { name: 'opt/python', type: 'directory', mode: 0o755 },
      { name: 'opt/python/README', type: 'symlink', target: `${env}/opt/python/README` },
      { name: 'opt/tools', type: 'symlink', target: `${env}/opt/tools` },
    ]);
    expect(opened.warnings).toEqual([]);

    const untouched = await layerEntries([app], spec({ lowerLayerDirectories: ['/opt/python'] }));
    expect(untouched.entries).toEqual(base);
  });

  it('refuses a copyToRoot path outside the closure or that is a single file', async () => {
    expect(() => rootLayerSource(fakeClosure([app]), spec({ copyToRoot: [busybox] }))).toThrow(
      new UserError(`copyToRoot: ${busybox} is not in the closure`),
    );
    const script = fakeStorePath('hello.sh');
    const fake = new FakeNars().add(script, undefined);
    const layer = rootLayerSource(fakeClosure([script]), spec({ copyToRoot: [script] }), { walk: fake.walk });
    const sink: TarSink = { add: async () => {} };
    await expect(layer.source(sink)).rejects.toThrow(
      new UserError(`copyToRoot: ${script} is a single file, not a directory; only a directory's entries can be linked into /`),
    );
  });

  it('gives the same entries every run, each path once and after its parent', async () => {
    const paths = [coreutils, busybox, cacert, python, bash];
    const rootSpec = spec({ copyToRoot: [coreutils, busybox, cacert, python], directories: [{ path: '/usr/local/bin', mode: 0o755 }] });
    const runs: TarEntry[][] = [];
    for (let i = 0; i < 2; i++) {
      const entries: TarEntry[] = [];
      await rootLayerSource(fakeClosure(paths), rootSpec, { walk: nars(paths).walk }).source({ add: async (e) => void entries.push(e) });
      runs.push(entries);
    }
    expect(runs[1]).toEqual(runs[0]);
    const names = runs[0]!.map((e) => e.name);
    expect(new Set(names).size).toBe(names.length);
    for (const [i, name] of names.entries()) {
      const parent = name.includes('/') ? name.slice(0, name.lastIndexOf('/')) : null;
      if (parent !== null) expect(names.slice(0, i)).toContain(parent);
    }
    expect(names).toContain('usr/bin/env');
    expect(names).toContain('usr/local/bin');
  });
});

describe('findEntries', () => {
  it('stops reading a NAR once it has passed the wanted entries', async () => {
    const big: FakeTree = { 'bin/sh': 'file', 'bin/zsh': 'file' };
    for (let i = 0; i < 100; i++) big[`share/file${i}`] = 'file';
    const path = fakeStorePath('big');
    const fake = new FakeNars().add(path, big);
    const info = fakeClosure([path]).paths.get(path)!;
    expect(await findEntries(info, ['bin/sh', 'bin/env'], fake.walk)).toEqual(new Set(['bin/sh']));
    expect(fake.visited).toBe(4); // '', bin, bin/sh, then bin/zsh shows bin/sh is behind
  });
});
