import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync, truncateSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, cliOk, REPO, runCli } from '../helpers/cli.js';
import { podmanLoad, podmanRemove, podmanRun } from '../helpers/podman.js';
import { tools } from '../helpers/tools.js';

const CLOSURE = join(REPO, 'layers/demo/demo.closure');
const PATH_INFO = join(REPO, 'layers/demo/demo.path-info.json');
const RECIPE = join(REPO, 'layers/demo/image.json');
const DEMO_APP = '/nix/store/wcpf5cfvsjws6i7zcgl7byik3nvxa0gi-demo-app';
const BUSYBOX = '/nix/store/mc8m8h4nkn1q075kcgqb869649gx00yf-busybox-demo';

const sha256 = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');
const build = (out: string, ...extra: string[]) =>
  cliOk(['build-image', '-q', '--closure', CLOSURE, '--path-info', PATH_INFO, '--recipe', RECIPE, '--output', out, ...extra]);

let dir: string;
let lowercaseDir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'nix2oci-e2e-demo-'));
  lowercaseDir = join(tmpdir(), `nix2oci-e2e-${process.pid}-${Date.now()}`);
  mkdirSync(lowercaseDir);
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
  rmSync(lowercaseDir, { recursive: true, force: true });
});

describe('build-image on the demo recipe', () => {
  it('is byte-for-byte reproducible, to a file and to stdout', () => {
    build(join(dir, 'a.tar'));
    build(join(dir, 'b.tar'));
    expect(sha256(join(dir, 'a.tar'))).toBe(sha256(join(dir, 'b.tar')));
    const piped = spawnSync(process.execPath, [CLI, 'build-image', '--closure', CLOSURE, '--recipe', RECIPE, '--output', '-'], { maxBuffer: 64 << 20 });
    expect(piped.status).toBe(0);
    expect(createHash('sha256').update(piped.stdout).digest('hex')).toBe(sha256(join(dir, 'a.tar')));
  });

  it('writes the same uncompressed image straight through (--no-cache) as through the cache', () => {
    const cached = join(dir, 'none-cached.tar');
    const direct = join(dir, 'none-direct.tar');
    build(cached, '--compression', 'none', '--cache-dir', join(dir, 'cache'));
    build(direct, '--compression', 'none', '--no-cache');
    expect(sha256(direct)).toBe(sha256(cached));
  });

  it('takes its times from SOURCE_DATE_EPOCH', () => {
    const out = join(dir, 'epoch.tar');
    cliOk(['build-image', '-q', '--closure', CLOSURE, '--recipe', RECIPE, '--output', out], { env: { SOURCE_DATE_EPOCH: '1700000000' } });
    const json = JSON.parse(cliOk(['inspect', '--json', out]).stdout);
    expect(json.config.created ?? json.created).toBe('2023-11-14T22:13:20Z');
    expect(sha256(out)).not.toBe(sha256(join(dir, 'a.tar')));
  });

  it('prints a JSON summary with one layer per store path plus the image root', () => {
    const out = join(dir, 'json.tar');
    const summary = JSON.parse(build(out, '--json').stdout);
    expect(summary.manifestDigest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(summary.layers.map((l: { contents: string[] }) => l.contents)).toEqual([
      [BUSYBOX],
      ['/nix/store/vfrs2c9442lx1wnsq55r94k3qi1hhvl4-demo-data'],
      [DEMO_APP],
      ['image-root'],
    ]);
  });

  it('gives a store path the same layer digest whatever else the image holds', () => {
    // Same busybox, different recipe and a layer budget that groups the other paths.
    const out = join(dir, 'other.tar');
    cliOk(['build-image', '-q', '--closure', CLOSURE, '--entrypoint', `${BUSYBOX}/bin/sh`, '--max-layers', '3', '--output', out, '--json']);
    const a = JSON.parse(cliOk(['inspect', '--json', join(dir, 'a.tar')]).stdout);
    const b = JSON.parse(cliOk(['inspect', '--json', out]).stdout);
    const busyboxLayer = (d: { layers: { digest: string; contents?: string[] }[] }) => d.layers.find((l) => l.contents?.length === 1 && l.contents[0] === BUSYBOX)?.digest;
    expect(busyboxLayer(a)).toBeDefined();
    expect(busyboxLayer(b)).toBe(busyboxLayer(a));
    expect(b.layers).toHaveLength(3);
  });
});

describe.runIf(tools('skopeo', 'umoci', 'nix-store'))('checked by skopeo and umoci', () => {
  it('skopeo reads the archive with the manifest digest the build printed', () => {
    const out = join(dir, 'skopeo.tar');
    const summary = JSON.parse(build(out, '--json').stdout);
    const raw = execFileSync('skopeo', ['inspect', '--raw', `oci-archive:${out}`]);
    expect(`sha256:${createHash('sha256').update(raw).digest('hex')}`).toBe(summary.manifestDigest);
    const info = JSON.parse(execFileSync('skopeo', ['inspect', `oci-archive:${out}`], { encoding: 'utf8' }));
    expect(info.Layers).toHaveLength(4);
    expect(info.Labels['org.opencontainers.image.title']).toBe('nix2oci demo');
    // The same archive read as a docker-archive (through its manifest.json) lists the diffIDs.
    const docker = JSON.parse(execFileSync('skopeo', ['inspect', `docker-archive:${out}`], { encoding: 'utf8' }));
    expect(docker.Layers).toEqual(summary.layers.map((l: { diffId: string }) => l.diffId));
  });

  it('umoci unpacks the store paths exactly as Nix has them', () => {
    // Real Nix imports the same export, so the store on this machine is the reference.
    execFileSync('sh', ['-c', `nix-store --import < '${CLOSURE}' > /dev/null`]);
    const layout = join(dir, 'layout');
    build(layout, '--format', 'oci-layout');
    const bundle = join(dir, 'bundle');
    execFileSync('umoci', ['unpack', '--image', `${layout}:nix2oci/demo:latest`, bundle], { stdio: 'pipe' });
    const rootfs = join(bundle, 'rootfs');
    for (const storePath of [BUSYBOX, DEMO_APP, '/nix/store/vfrs2c9442lx1wnsq55r94k3qi1hhvl4-demo-data']) {
      compareTrees(storePath, join(rootfs, storePath));
    }
    expect(statSync(join(rootfs, 'nix/store')).mode & 0o7777).toBe(0o555);
    expect(lstatSync(join(rootfs, 'tmp')).mode & 0o7777).toBe(0o1777);
    expect(readFileSync(join(rootfs, 'etc/passwd'), 'utf8')).toMatch(/^root:x:0:0:/m);
    expect(readlinkSync(join(rootfs, 'bin'))).toBe(`${BUSYBOX}/bin`);
    expect(lstatSync(join(rootfs, 'data')).isDirectory()).toBe(true);
  });
});

describe.runIf(tools('podman'))('podman loads and runs every format', () => {
  const loaded: string[] = [];
  afterAll(() => podmanRemove(...loaded));

  for (const format of ['oci-archive', 'docker-archive', 'oci-layout'] as const) {
    it(`runs the demo from ${format}`, () => {
      // podman 4.3 names an image loaded from a directory after its path, which must then be lowercase.
      const out = join(lowercaseDir, `podman-${format}`);
      build(out, '--format', format, '--tag', `localhost/nix2oci-e2e-${format}:test`);
      const id = podmanLoad(out);
      loaded.push(id);
      const text = podmanRun(id, ['one', 'two']);
      expect(text).toBe('hello from nix2oci\nserved from a Nix store path\nargs: one two\n');
    });
  }
});

describe('bad input: a one-line error, a non-zero exit and no output', () => {
  const cases: [string, (file: string) => void, RegExp][] = [
    ['an empty file', (f) => writeFileSync(f, ''), /demo-bad\.closure.*empty/],
    ['a truncated export', (f) => { copyFileSync(CLOSURE, f); truncateSync(f, 1_000_000); }, /demo-bad\.closure.*unexpected end of file at byte \d+/],
    ['not an export at all', (f) => writeFileSync(f, 'hello world, not a closure at all!'), /demo-bad\.closure.*byte \d+/],
  ];
  for (const [what, make, message] of cases) {
    it(what, () => {
      const bad = join(dir, 'demo-bad.closure');
      make(bad);
      const out = join(dir, `bad-${what.replace(/\W+/g, '-')}.tar`);
      const result = runCli(['build-image', '--closure', bad, '--recipe', RECIPE, '--output', out]);
      expect(result.code).toBe(1);
      const errorLines = result.stderr.split('\n').filter((l) => l.startsWith('nix2oci:'));
      expect(errorLines).toHaveLength(1);
      expect(errorLines[0]).toMatch(message);
      expect(result.stderr).not.toMatch(/\n\s+at /);
      expect(existsSync(out)).toBe(false);
      expect(readdirSync(dir).filter((f) => f.includes('.tmp') || f.startsWith('.'))).toEqual([]);
    });
  }

  it('a recipe with an unknown key names the key and suggests the right one', () => {
    const recipe = join(dir, 'typo.json');
    writeFileSync(recipe, JSON.stringify({ entrypiont: ['/bin/sh'] }));
    const result = runCli(['build-image', '--closure', CLOSURE, '--recipe', recipe, '--output', join(dir, 'typo.tar')]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/typo\.json.*entrypiont.*entrypoint/);
    expect(existsSync(join(dir, 'typo.tar'))).toBe(false);
  });

  it('a recipe naming a store path the closure lacks', () => {
    const result = runCli(['build-image', '--closure', CLOSURE, '--entrypoint', '["{{python3}}/bin/python3"]', '--output', join(dir, 'py.tar')]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/python3/);
    expect(existsSync(join(dir, 'py.tar'))).toBe(false);
  });
});

/** Every file, directory and symlink of `expected` (a real store path) is in `actual` with its mode, target and bytes. */
function compareTrees(expected: string, actual: string): void {
  const a = lstatSync(expected);
  const b = lstatSync(actual);
  expect(b.isSymbolicLink(), actual).toBe(a.isSymbolicLink());
  if (a.isSymbolicLink()) {
    expect(readlinkSync(actual)).toBe(readlinkSync(expected));
    return;
  }
  expect(b.mode & 0o7777, actual).toBe(a.mode & 0o7777);
  if (a.isDirectory()) {
    expect(readdirSync(actual).sort()).toEqual(readdirSync(expected).sort());
    for (const name of readdirSync(expected)) compareTrees(join(expected, name), join(actual, name));
  } else {
    expect(sha256(actual), actual).toBe(sha256(expected));
  }
}
