import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliOk, REPO } from '../helpers/cli.js';
import { exportClosure, nixBuild } from '../helpers/nix.js';
import { tools } from '../helpers/tools.js';
import { useScratchDirs } from '../helpers/scratch.js';
import { makeWheel } from '../helpers/wheels.js';

/**
 * Image bytes are nix2oci's contract: the manifest digests of these reference builds must not change
 * unless a change means them to (then the cache format version is bumped and the commit says why).
 * Every input here is deterministic on any machine: the committed demo closure, a synthetic closure
 * whose files Nix derivations write from fixed seeds, and wheels made with fixed contents.
 */

const scratch = useScratchDirs();
const ready = tools('nix-build', 'nix-store', 'python3');

/**
 * Reference manifest digests, recorded from main before the layer pipeline was re-laid (issue 9); the
 * zstd ones when zstd layers came (issue 10).
 */
const EXPECTED: Record<string, string> = {
  'demo oci-archive gzip': 'sha256:5052eaf317a8fa771e142c84db4ff23bcb8fe59f09e22201f4326a478827bbba',
  'demo oci-archive none': 'sha256:3dadd320af6cd95bee116d34ec2baeea8a4ba917e1c306e9fca6047b10803c66',
  'demo oci-archive popularity': 'sha256:5052eaf317a8fa771e142c84db4ff23bcb8fe59f09e22201f4326a478827bbba',
  'demo docker-archive': 'sha256:9938d74ca9c681c9d196ec2909201fea97421572010d12b298a23d18e4cef9d7',
  'demo oci-layout': 'sha256:5052eaf317a8fa771e142c84db4ff23bcb8fe59f09e22201f4326a478827bbba',
  'synthetic gzip size-aware': 'sha256:5e5b9192bc851670dbacc6cb682bca26bbc7d66917fb2614ba86632d60322edb',
  'synthetic gzip popularity': 'sha256:4b336924418e47231e7bf831743834a43ff722f6d118d16ecdb10f598a1d892f',
  'synthetic none size-aware': 'sha256:7a49edd836a75ff75328a719d6c9f518c05885f21ca7dc7d00bd067af926ebd0',
  'synthetic none popularity': 'sha256:3831491b908c8351b2f6a9ec2e7841b11dbe3a72cde474dd708357188de8de9f',
  'synthetic wheels gzip': 'sha256:420ff722323331e93735ded0bed061190e7a2d3fbee73bd353f45048f8100572',
  'synthetic wheels none': 'sha256:65a9853860cb8ac8cd3009cde381c0f723f399eebb9b9128078b9dea2286ef8a',
  'demo oci-archive zstd': 'sha256:886e0f393598b560900afd801ca9f41856d7eb08db97a846f08bd15f61c6fedb',
  'synthetic zstd size-aware': 'sha256:2026a2ae66d1874f86bdfbbe5d7b0744b33f3aca8a66ff0a79427140d44361e4',
  'synthetic wheels zstd': 'sha256:9f3613acc3c6b93553fc6f5891ae4cfa6a6a29e55903160f689bed67111471bf',
};

/**
 * 24 small store paths referring to each other (so the plans group them), one of 9 MiB (several 4 MiB
 * gzip parts), and a stand-in Python 3.11 with a site-packages directory for wheels. File contents come
 * from awk with fixed seeds: the same bytes on every machine.
 */
const SYNTHETIC = `
let
  small = n: deps: mkDrv "ref-lib\${toString n}-1.\${toString n}" ''
    mkdir -p $out/lib $out/share/doc $out/bin
    /usr/bin/awk 'BEGIN { srand(\${toString n}); for (i = 0; i < 3000; i++) printf "line %d of lib \${toString n}: %d\\n", i, int(rand() * 100000) }' > $out/lib/data.txt
    /usr/bin/awk 'BEGIN { for (i = 0; i < 40; i++) printf "%c", 65 + (i * \${toString n}) % 26 }' > $out/share/doc/README
    printf '#!/bin/sh\\necho lib\${toString n}\\n' > $out/bin/tool\${toString n}
    chmod 0555 $out/bin/tool\${toString n}
    ln -s ../lib/data.txt $out/share/doc/data
    echo \${toString deps} > $out/share/doc/references
  '';
  range = from: to: if from > to then [ ] else [ from ] ++ range (from + 1) to;
  smalls = builtins.foldl' (acc: n:
    acc ++ [ (small n (if n < 2 then [ ] else [ (builtins.elemAt acc (n / 2)) (builtins.elemAt acc (n / 3)) ])) ]
  ) [ ] (range 0 23);
  big = mkDrv "ref-big" ''
    mkdir -p $out/lib
    /usr/bin/awk 'BEGIN { srand(7); for (i = 0; i < 600000; i++) printf "%08x %d\\n", int(rand() * 4294967295), i }' | /usr/bin/head -c 9437184 > $out/lib/libbig.so
  '';
  python = mkDrv "python3-3.11.9" ''
    mkdir -p $out/bin $out/lib/python3.11/site-packages
    printf '#!/bin/sh\\nexit 0\\n' > $out/bin/python3.11
    chmod 0555 $out/bin/python3.11
    ln -s python3.11 $out/bin/python3
    echo 'import sys' > $out/lib/python3.11/os.py
  '';
in mkDrv "ref-app" ''
  mkdir -p $out/bin
  echo \${toString (smalls ++ [ big python ])} > $out/references
  ln -s \${python}/bin/python3 $out/bin/python3
''`;

describe.runIf(ready)('reference builds keep their manifest digests', () => {
  let dir: string;
  let synthetic: string;
  const wheels: string[] = [];
  const got: Record<string, string> = {};

  /** Builds and returns the manifest digest the CLI reports. */
  const build = (name: string, args: string[]) => {
    const out = join(dir, name.replace(/ /g, '-'));
    const summary = JSON.parse(cliOk(['build-image', '-q', '--json', '--no-cache', '--output', out, ...args]).stdout) as { manifestDigest: string };
    got[name] = summary.manifestDigest;
    return { out, digest: summary.manifestDigest };
  };
  /** Recording (NIX2OCI_RECORD_DIGESTS=file) writes what the builds gave instead of comparing. */
  const check = (name: string) => {
    if (!process.env.NIX2OCI_RECORD_DIGESTS) expect({ name, digest: got[name] }).toEqual({ name, digest: EXPECTED[name] });
  };
  const demo = ['--closure', join(REPO, 'layers/demo/demo.closure'), '--path-info', join(REPO, 'layers/demo/demo.path-info.json'), '--recipe', join(REPO, 'layers/demo/image.json')];

  beforeAll(() => {
    dir = scratch('nix2oci-reference-');
    const [root] = nixBuild(SYNTHETIC);
    synthetic = join(dir, 'synthetic.closure');
    exportClosure([root!], synthetic);
    const wheelDir = join(dir, 'wheels');
    mkdirSync(wheelDir);
    wheels.push(
      makeWheel({ dir: wheelDir, name: 'refpkg', version: '1.0', files: { 'refpkg/__init__.py': 'VALUE = 1\n', 'refpkg/data.bin': { random: 300_000, seed: 3 } }, entryPoints: { console_scripts: { refpkg: 'refpkg:main' } } }),
      makeWheel({ dir: wheelDir, name: 'refdep', version: '2.1', files: { 'refdep/__init__.py': '# dep\n' } }),
    );
  }, 600_000);

  it('the demo image, in every format and plan', () => {
    build('demo oci-archive gzip', demo);
    build('demo oci-archive none', [...demo, '--compression', 'none']);
    build('demo oci-archive zstd', [...demo, '--compression', 'zstd']);
    build('demo oci-archive popularity', [...demo, '--layer-strategy', 'popularity']);
    build('demo docker-archive', [...demo, '--format', 'docker-archive']);
    const layout = build('demo oci-layout', [...demo, '--format', 'oci-layout']);
    // The layout's index names the manifest the build reported.
    const index = JSON.parse(readFileSync(join(layout.out, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
    expect(index.manifests[0]!.digest).toBe(layout.digest);
    for (const name of Object.keys(got)) check(name);
  });

  it('a closure grouped into few layers, gzip and none, both plans', () => {
    for (const compression of ['gzip', 'none']) {
      for (const strategy of ['size-aware', 'popularity']) {
        const name = `synthetic ${compression} ${strategy}`;
        build(name, ['--closure', synthetic, '--max-layers', '8', '--layer-strategy', strategy, '--compression', compression]);
        check(name);
      }
    }
    build('synthetic zstd size-aware', ['--closure', synthetic, '--max-layers', '8', '--compression', 'zstd']);
    check('synthetic zstd size-aware');
  });

  it('wheels installed on the closure', () => {
    for (const compression of ['gzip', 'none', 'zstd']) {
      const name = `synthetic wheels ${compression}`;
      build(name, ['--closure', synthetic, '--max-layers', '8', '--compression', compression, ...wheels.flatMap((w) => ['--wheel', w])]);
      check(name);
    }
  });

  it('uncompressed wheel layers made side by side give the archive of one at a time, byte for byte', () => {
    // A low split size gives refpkg a split-off layer too: three wheel layers of known size, placed at once.
    const args = ['--closure', synthetic, '--max-layers', '8', '--compression', 'none', '--wheel-split-size', '200K', ...wheels.flatMap((w) => ['--wheel', w])];
    const sha = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');
    const one = join(dir, 'wheels-none-jobs1.tar');
    const two = join(dir, 'wheels-none-jobs3.tar');
    const layers = (out: string, jobs: string) =>
      (JSON.parse(cliOk(['build-image', '-q', '--json', '--no-cache', '--jobs', jobs, '--output', out, ...args]).stdout) as { layers: unknown[] }).layers.length;
    expect(layers(one, '1')).toBe(layers(two, '3'));
    expect(sha(two)).toBe(sha(one));
  });

  it('the same digests through the layer cache, cold and warm', () => {
    const cache = join(dir, 'cache');
    for (const compression of ['gzip', 'none', 'zstd']) {
      const name = `synthetic ${compression} size-aware`;
      const args = ['--closure', synthetic, '--max-layers', '8', '--compression', compression, '--cache-dir', cache];
      for (const round of ['cold', 'warm']) {
        const out = join(dir, `cached-${compression}-${round}.tar`);
        const summary = JSON.parse(cliOk(['build-image', '-q', '--json', '--output', out, ...args]).stdout) as { manifestDigest: string };
        expect({ name, round, digest: summary.manifestDigest }).toEqual({ name, round, digest: EXPECTED[name] });
      }
    }
    // Wheels too: uncompressed, the cache's layers are written whole by an unzip thread, as without a cache.
    for (const compression of ['none', 'gzip']) {
      const name = `synthetic wheels ${compression}`;
      const args = ['--closure', synthetic, '--max-layers', '8', '--compression', compression, '--cache-dir', cache, ...wheels.flatMap((w) => ['--wheel', w])];
      for (const round of ['cold', 'warm']) {
        const out = join(dir, `cached-wheels-${compression}-${round}.tar`);
        const summary = JSON.parse(cliOk(['build-image', '-q', '--json', '--output', out, ...args]).stdout) as { manifestDigest: string };
        expect({ name, round, digest: summary.manifestDigest }).toEqual({ name, round, digest: EXPECTED[name] });
      }
    }
  });

  // NIX2OCI_RECORD_DIGESTS=file: writes what the builds gave, to update EXPECTED on purpose.
  afterAll(() => {
    if (process.env.NIX2OCI_RECORD_DIGESTS) writeFileSync(process.env.NIX2OCI_RECORD_DIGESTS, `${JSON.stringify(got, null, 2)}\n`);
  });
});
