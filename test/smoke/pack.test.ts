import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync } from 'node:fs';
import { join, relative, sep } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO, runCli } from '../helpers/cli.js';
import { useScratchDirs } from '../helpers/scratch.js';

/**
 * The package as a user gets it without the npm registry (README, "Install"): `npm pack` in a checkout,
 * then `npm install -g ./nix2oci-<version>.tgz` into an empty prefix, without dev dependencies. The
 * installed `nix2oci` answers --help and builds the demo image, the same bytes as the checkout's build.
 */
const scratch = useScratchDirs();

/** What a checkout holds besides what `npm ci` and builds make. */
const NOT_IN_A_CHECKOUT = new Set(['node_modules', 'dist', '.git', 'out', '.cache', '.bench', 'test-results.json']);

function run(command: string, args: string[], cwd: string): SpawnSyncReturns<string> {
  const result = spawnSync(command, args, {
    cwd,
    encoding: 'utf8',
    maxBuffer: 64 << 20,
    env: { ...process.env, npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false' },
  });
  if (result.error) throw result.error;
  return result;
}

function ok(result: SpawnSyncReturns<string>, what: string): string {
  if (result.status !== 0) throw new Error(`${what} exited with ${result.status}:\n${result.stdout}\n${result.stderr}`);
  return result.stdout;
}

describe('the packed tarball', () => {
  it('installs into an empty prefix without dev dependencies, and its nix2oci runs --help and the demo build', () => {
    // A copy of the checkout, so that packing (which rebuilds dist/) never touches the dist/ other tests run.
    const checkout = scratch('nix2oci-pack-src-');
    cpSync(REPO, checkout, {
      recursive: true,
      filter: (source) => {
        const path = relative(REPO, source);
        return path === '' || !NOT_IN_A_CHECKOUT.has(path.split(sep)[0]!);
      },
    });
    // The dev dependencies packing needs (tsc), as `npm ci` installed them.
    symlinkSync(join(REPO, 'node_modules'), join(checkout, 'node_modules'), 'dir');

    const packs = scratch('nix2oci-pack-out-');
    const packed = JSON.parse(ok(run('npm', ['pack', '--json', '--pack-destination', packs], checkout), 'npm pack')) as {
      filename: string;
      files: { path: string }[];
    }[];
    const version = (JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string }).version;
    expect(packed[0]!.filename).toBe(`nix2oci-${version}.tgz`);
    const files = packed[0]!.files.map((f) => f.path);
    expect(files).toContain('dist/cli/main.js');
    expect(files).toContain('layers/demo/demo.closure');
    expect(files.filter((f) => f.startsWith('src/') || f.startsWith('test/') || f.endsWith('.map'))).toEqual([]);
    const tarball = join(packs, packed[0]!.filename);

    // Offline from npm's cache, which `npm ci` filled; the registry only when the cache lacks something.
    const prefix = scratch('nix2oci-pack-prefix-');
    const install = (network: string) => run('npm', ['install', '-g', '--prefix', prefix, '--omit=dev', '--no-audit', '--no-fund', network, tarball], packs);
    let installed = install('--offline');
    if (installed.status !== 0 && /ENOTCACHED/.test(installed.stderr)) installed = install('--prefer-offline');
    ok(installed, 'npm install -g of the tarball');

    const home = join(prefix, 'lib', 'node_modules', 'nix2oci');
    const deps = readdirSync(join(home, 'node_modules'));
    for (const dev of ['typescript', 'vitest', 'node-forge', '@types']) expect(deps).not.toContain(dev);
    expect(existsSync(join(home, 'src'))).toBe(false);

    const nix2oci = join(prefix, 'bin', 'nix2oci');
    const work = scratch('nix2oci-pack-run-');
    const help = ok(run(nix2oci, ['--help'], work), 'nix2oci --help');
    for (const command of ['build-image', 'inspect', 'push', 'cache']) expect(help).toContain(command);

    const demo = join(REPO, 'layers', 'demo');
    const output = join(work, 'demo.tar');
    const args = (out: string, cache: string) => [
      'build-image',
      '--closure', join(demo, 'demo.closure'),
      '--path-info', join(demo, 'demo.path-info.json'),
      '--recipe', join(demo, 'image.json'),
      '--output', out,
      '--cache-dir', cache,
      '--json',
    ];
    const built = JSON.parse(ok(run(nix2oci, args(output, join(work, 'cache')), work), 'the installed nix2oci build-image')) as { manifestDigest: string };
    expect(existsSync(output)).toBe(true);

    // The same image as the checkout's own build.
    mkdirSync(join(work, 'checkout'));
    const reference = runCli(args(join(work, 'checkout', 'demo.tar'), join(work, 'checkout', 'cache')));
    expect(reference.code, reference.stderr).toBe(0);
    expect(built.manifestDigest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(built.manifestDigest).toBe((JSON.parse(reference.stdout) as { manifestDigest: string }).manifestDigest);

    // SBOMs need only runtime dependencies (the CycloneDX library's validator's are dev-only).
    const sbom = ok(run(nix2oci, [...args(join(work, 'sbom.tar'), join(work, 'cache')), '--sbom', 'both', '--provenance'], work), 'the installed nix2oci build-image --sbom both');
    expect((JSON.parse(sbom) as { attachments: unknown[] }).attachments).toHaveLength(3);
    expect(JSON.parse(ok(run(nix2oci, ['sbom', '--format', 'cyclonedx', join(work, 'sbom.tar')], work), 'the installed nix2oci sbom'))).toMatchObject({ bomFormat: 'CycloneDX' });
    // zstd from the installed package: its WebAssembly loads on the worker threads and gives the checkout's bytes.
    const zstd = (out: string, cache: string) => [...args(out, cache), '--compression', 'zstd'];
    const zstdBuilt = JSON.parse(ok(run(nix2oci, zstd(join(work, 'demo-zstd.tar'), join(work, 'cache')), work), 'the installed nix2oci, zstd')) as { manifestDigest: string };
    const zstdReference = runCli(zstd(join(work, 'checkout', 'demo-zstd.tar'), join(work, 'checkout', 'cache')));
    expect(zstdReference.code, zstdReference.stderr).toBe(0);
    expect(zstdBuilt.manifestDigest).toBe((JSON.parse(zstdReference.stdout) as { manifestDigest: string }).manifestDigest);
  }, 600_000);
});
