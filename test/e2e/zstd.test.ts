import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildMultiMemberImage, startContainerd, type Containerd, type MultiMemberImage } from '../helpers/containerd.js';
import { cliOk, runCli } from '../helpers/cli.js';
import { podmanLoad, podmanRemove, podmanRun } from '../helpers/podman.js';
import { startRegistry, type RunningRegistry } from '../helpers/registry.js';
import { useScratchDirs } from '../helpers/scratch.js';
import { tools } from '../helpers/tools.js';
import { podmanPullAndRun, skopeoCopyBack, skopeoInspect } from '../registry/support/verify.js';

/*
 * zstd images as the runtimes and tools that read them see them. One image, built once from a real Nix
 * closure (static busybox + a 10 MB data file, so its data layer is several zstd frames), goes through
 * every check: zstd -t and the diffIDs, skopeo, umoci (0.5 and later), podman load + run, containerd
 * import + run, and a push + pull through a local registry.
 */

interface Manifest {
  layers: { mediaType: string; digest: string }[];
  config: { digest: string };
}

const hex = (digest: string) => digest.slice('sha256:'.length);

describe.runIf(tools('zstd', 'skopeo', 'umoci', 'podman', 'runc', 'containerd', 'ctr', 'docker-registry', 'nix-build', 'nix-store'))('zstd images', () => {
  const scratch = useScratchDirs();
  let dir: string;
  let image: MultiMemberImage;
  let layout: string;
  let manifest: Manifest;
  let containerd: Containerd | undefined;
  let registry: RunningRegistry | undefined;

  beforeAll(async () => {
    dir = scratch('nix2oci-e2e-zstd-');
    image = buildMultiMemberImage(dir, 'localhost/nix2oci-zstd:test', 'zstd');
    layout = join(dir, 'multimember.zstd.oci');
    const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
    manifest = JSON.parse(readFileSync(join(layout, 'blobs/sha256', hex(index.manifests[0]!.digest)), 'utf8')) as Manifest;
    [containerd, registry] = await Promise.all([startContainerd(), startRegistry()]);
  });

  afterAll(async () => {
    podmanRemove(image?.name);
    await Promise.all([containerd?.stop(), registry?.stop()]);
  });

  it('has zstd layers that zstd -t accepts, each decompressing to the tar its diffID names', () => {
    expect(manifest.layers.length).toBeGreaterThanOrEqual(3);
    expect(image.dataLayerMembers).toBeGreaterThanOrEqual(3); // 10 MB of data: several frames
    const config = JSON.parse(readFileSync(join(layout, 'blobs/sha256', hex(manifest.config.digest)), 'utf8')) as { rootfs: { diff_ids: string[] } };
    manifest.layers.forEach((layer, i) => {
      expect(layer.mediaType).toBe('application/vnd.oci.image.layer.v1.tar+zstd');
      const blob = join(layout, 'blobs/sha256', hex(layer.digest));
      execFileSync('zstd', ['-q', '-t', blob]);
      const tar = execFileSync('zstd', ['-q', '-d', '-c', blob], { maxBuffer: 64 << 20 });
      expect(`sha256:${createHash('sha256').update(tar).digest('hex')}`).toBe(config.rootfs.diff_ids[i]);
    });
  });

  it('is described by nix2oci inspect, each layer as zstd', () => {
    const described = JSON.parse(cliOk(['inspect', '--json', image.ociArchive]).stdout) as { layers: { digest: string; compression: string }[] };
    expect(described.layers.map((l) => [l.digest, l.compression])).toEqual(manifest.layers.map((l) => [l.digest, 'zstd']));
    const text = cliOk(['inspect', image.ociArchive]).stdout;
    for (const layer of manifest.layers) expect(text).toContain(`${layer.digest}  zstd  `);
  });

  it('is inspected, and copied unchanged, by skopeo', () => {
    const inspected = JSON.parse(execFileSync('skopeo', ['inspect', `oci-archive:${image.ociArchive}`], { encoding: 'utf8' })) as { Layers: string[] };
    expect(inspected.Layers).toEqual(manifest.layers.map((l) => l.digest));
    const copy = join(dir, 'skopeo-copy');
    execFileSync('skopeo', ['copy', '--quiet', `oci-archive:${image.ociArchive}`, `oci:${copy}:copied`]);
    for (const layer of manifest.layers) expect(existsSync(join(copy, 'blobs/sha256', hex(layer.digest)))).toBe(true);
  });

  // zstd arrived in umoci 0.5 (opencontainers/umoci#562); Debian 12's 0.4.7 refuses the media type.
  it('is unpacked by umoci 0.5+ into the files of the closure, and refused by older umoci by its media type', () => {
    const bundle = join(dir, 'umoci-bundle');
    const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8')) as { manifests: { annotations: Record<string, string> }[] };
    const refName = index.manifests[0]!.annotations['org.opencontainers.image.ref.name']!;
    const version = /umoci version (\d+)\.(\d+)/.exec(execFileSync('umoci', ['--version'], { encoding: 'utf8' }))!;
    const unpack = () => execFileSync('umoci', ['unpack', '--image', `${layout}:${refName}`, bundle], { stdio: 'pipe' });
    if (Number(version[1]) === 0 && Number(version[2]) < 5) {
      expect(unpack).toThrow(/not correct mediatype: application\/vnd\.oci\.image\.layer\.v1\.tar\+zstd/);
      return;
    }
    unpack();
    const dataFile = image.expectedOutput.trim().split(/\s+/)[1]!;
    const hash = createHash('sha256').update(readFileSync(join(bundle, 'rootfs', dataFile))).digest('hex');
    expect(`${hash}  ${dataFile}\n`).toBe(image.expectedOutput);
  });

  it('loads and runs in podman', () => {
    podmanLoad(image.ociArchive);
    expect(podmanRun(image.name)).toBe(image.expectedOutput);
  });

  it('imports, unpacks and runs in containerd', () => {
    const ctr = containerd!.ctr;
    expect(ctr(['images', 'import', '--snapshotter', 'native', image.ociArchive])).toContain(`unpacking ${image.name}`);
    const output = ctr(['run', '--rm', '--snapshotter', 'native', '--runtime', 'io.containerd.runc.v2', image.name, 'zstd-run']);
    expect(output).toBe(image.expectedOutput);
  });

  it('is pushed as it is, then pulled back and run', async () => {
    const ref = `${registry!.host}/nix2oci/zstd:test`;
    const pushed = cliOk(['push', '--tls-verify=false', image.ociArchive, '--registry', ref]);
    expect(pushed.stderr).toMatch(/\(zstd\)/); // the progress names each layer's compression
    const access = { tlsVerify: false };
    expect((await skopeoInspect(ref, access)).Layers).toEqual(manifest.layers.map((l) => l.digest));
    const back = await skopeoCopyBack(ref, access);
    for (const layer of manifest.layers) expect(back.blobs).toContain(layer.digest);
    expect(await podmanPullAndRun(ref, access)).toBe(image.expectedOutput);
  });

  it('refuses zstd for a docker-archive up front, naming why, and writes nothing', () => {
    const output = join(dir, 'refused.tar');
    mkdirSync(join(dir, 'empty'), { recursive: true });
    const result = runCli(['build-image', '--closure', join(dir, 'multimember.closure'), '--compression', 'zstd', '--format', 'docker-archive', '--output', output, '--no-cache']);
    expect(result.code).toBe(1);
    expect(result.stderr.trim().split('\n')).toEqual([expect.stringMatching(/docker-archive: Docker before 23 cannot load zstd layers/)]);
    expect(existsSync(output)).toBe(false);
  });
});
