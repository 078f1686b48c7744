import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, cliOk, REPO, runCli } from '../helpers/cli.js';
import { podman, podmanRemove } from '../helpers/podman.js';
import { startRegistry, type RunningRegistry } from '../helpers/registry.js';
import { startReferrersRegistry, type ReferrersRegistry } from '../helpers/referrers-registry.js';
import { useScratchDirs } from '../helpers/scratch.js';
import { tools } from '../helpers/tools.js';
import { cyclonedxErrors, spdxErrors } from '../helpers/sbom-validate.js';

const scratch = useScratchDirs();
// A name of its own: podman's store is shared with the other test files, which load nix2oci/demo.
const NAME = 'nix2oci/sbom-demo:latest';
const DEMO = ['--closure', join(REPO, 'layers/demo/demo.closure'), '--path-info', join(REPO, 'layers/demo/demo.path-info.json'), '--recipe', join(REPO, 'layers/demo/image.json'), '-t', NAME];
const EPOCH = { SOURCE_DATE_EPOCH: '1700000000' };

interface SpdxDoc {
  documentNamespace: string;
  packages: Array<{ SPDXID: string; name: string; versionInfo?: string; packageFileName?: string; checksums?: { algorithm: string; checksumValue: string }[]; externalRefs?: { referenceLocator: string }[] }>;
  relationships: Array<{ spdxElementId: string; relationshipType: string; relatedSpdxElement: string }>;
}
interface CdxDoc {
  serialNumber: string;
  metadata: { component: { 'bom-ref': string } };
  components: Array<{ 'bom-ref': string; name: string; version?: string; purl: string; hashes?: { content: string }[]; licenses?: unknown[]; properties?: { name: string; value: string }[] }>;
  dependencies: Array<{ ref: string; dependsOn?: string[] }>;
}

/** The CLI as a child process that does not block this one (which may be serving it as a registry). */
async function cliAsync(args: string[]): Promise<{ stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, NIX2OCI_DEBUG: '' } });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  if (code !== 0) throw new Error(`nix2oci ${args.join(' ')} exited ${code}:\n${stderr}`);
  return { stdout, stderr };
}

function sriToHex(sri: string): string {
  return Buffer.from(sri.replace(/^sha256-/, ''), 'base64').toString('hex');
}

function sha256File(file: string): string {
  return createHash('sha256').update(readFileSync(file)).digest('hex');
}

describe.runIf(tools('docker-registry', 'skopeo', 'podman', 'umoci'))('SBOM and provenance of the demo image', () => {
  let dir: string;
  let archive: string;
  let layout: string;
  let summary: { manifestDigest: string; layers: { digest: string; contents: string[] }[]; attachments: { artifactType: string; digest: string }[] };
  let docs: { spdx: string; cdx: string; provenance: string };
  let warnings: string;
  let registry: RunningRegistry;
  let fake: ReferrersRegistry;
  const loaded: string[] = [];

  beforeAll(async () => {
    dir = scratch('nix2oci-sbom-');
    archive = join(dir, 'demo.tar');
    layout = join(dir, 'demo-layout');
    for (const sub of ['docs1', 'docs2']) execFileSync('mkdir', [join(dir, sub)]);
    const first = cliOk(['build-image', ...DEMO, '--no-cache', '--output', archive, '--json', '--sbom', 'both', '--provenance', '--sbom-dir', join(dir, 'docs1')], { env: EPOCH });
    summary = JSON.parse(first.stdout);
    warnings = first.stderr;
    // The same build again, through the cache this time, to another file: the documents must not change.
    cliOk(['build-image', ...DEMO, '--output', join(dir, 'again.tar'), '-q', '--sbom', 'both', '--provenance', '--sbom-dir', join(dir, 'docs2')], { env: EPOCH });
    cliOk(['build-image', ...DEMO, '--output', layout, '--format', 'oci-layout', '-q', '--sbom', 'both', '--provenance'], { env: EPOCH });
    const read = (name: string) => readFileSync(join(dir, 'docs1', name), 'utf8');
    docs = { spdx: read('sbom.spdx.json'), cdx: read('sbom.cdx.json'), provenance: read('provenance.intoto.json') };
    [registry, fake] = await Promise.all([startRegistry(), startReferrersRegistry()]);
  });
  afterAll(async () => {
    podmanRemove(...loaded);
    await Promise.all([registry?.stop(), fake?.stop()]);
  });

  it('writes an SPDX 2.3 document valid against SPDX\'s schema and a CycloneDX 1.6 document the CycloneDX library validates', async () => {
    expect(spdxErrors(docs.spdx)).toBeNull();
    expect(await cyclonedxErrors(docs.cdx)).toBeNull();
    // The schema does refuse what is wrong: a package without its required downloadLocation.
    const broken = JSON.parse(docs.spdx) as SpdxDoc & { packages: Record<string, unknown>[] };
    delete broken.packages[1]!.downloadLocation;
    expect(spdxErrors(JSON.stringify(broken))).toMatch(/downloadLocation/);
    expect(await cyclonedxErrors(docs.cdx.replace('"bomFormat": "CycloneDX"', '"bomFormat": "SPDX"'))).not.toBeNull();
  });

  it('gives the same bytes on a second build (another output, through the cache): no time but SOURCE_DATE_EPOCH, ids from the image digest', () => {
    for (const name of readdirSync(join(dir, 'docs1'))) {
      expect(readFileSync(join(dir, 'docs2', name)), name).toEqual(readFileSync(join(dir, 'docs1', name)));
    }
    const spdx = JSON.parse(docs.spdx) as SpdxDoc & { creationInfo: { created: string } };
    expect(spdx.creationInfo.created).toBe('2023-11-14T22:13:20Z');
    const cdx = JSON.parse(docs.cdx) as CdxDoc;
    expect(cdx.metadata.component['bom-ref']).toBe(summary.manifestDigest);
    // A different image (another epoch, so another config and manifest) gets another serial number and namespace.
    const other = join(dir, 'other.tar');
    execFileSync('mkdir', [join(dir, 'docs3')]);
    cliOk(['build-image', ...DEMO, '--output', other, '-q', '--sbom', 'both', '--sbom-dir', join(dir, 'docs3')], { env: { SOURCE_DATE_EPOCH: '1700000001' } });
    const otherCdx = JSON.parse(readFileSync(join(dir, 'docs3', 'sbom.cdx.json'), 'utf8')) as CdxDoc;
    const otherSpdx = JSON.parse(readFileSync(join(dir, 'docs3', 'sbom.spdx.json'), 'utf8')) as SpdxDoc;
    expect(otherCdx.serialNumber).not.toBe(cdx.serialNumber);
    expect(otherSpdx.documentNamespace).not.toBe(spdx.documentNamespace);
  });

  it("lists every store path of the closure with the NAR hash and references Nix gave, and the layer that holds it", () => {
    const pathInfo = JSON.parse(readFileSync(join(REPO, 'layers/demo/demo.path-info.json'), 'utf8')) as { path: string; narHash: string; references: string[] }[];
    const cdx = JSON.parse(docs.cdx) as CdxDoc;
    const storePaths = cdx.components.filter((c) => c.purl.startsWith('pkg:nix/'));
    expect(storePaths.map((c) => c['bom-ref']).sort()).toEqual(pathInfo.map((p) => p.path).sort());
    for (const info of pathInfo) {
      const component = storePaths.find((c) => c['bom-ref'] === info.path)!;
      expect(component.hashes![0]!.content).toBe(sriToHex(info.narHash));
      const deps = cdx.dependencies.find((d) => d.ref === info.path)?.dependsOn ?? [];
      expect(deps.sort()).toEqual(info.references.filter((r) => r !== info.path).sort());
      const holding = summary.layers.filter((l) => l.contents.includes(info.path)).map((l) => l.digest);
      expect(component.properties!.filter((p) => p.name === 'nix2oci:layer').map((p) => p.value)).toEqual(holding);
    }
    const spdx = JSON.parse(docs.spdx) as SpdxDoc;
    const spdxPaths = spdx.packages.filter((p) => p.packageFileName?.startsWith('/nix/store/'));
    expect(spdxPaths.map((p) => p.packageFileName).sort()).toEqual(pathInfo.map((p) => p.path).sort());
    for (const p of spdxPaths) expect(p.checksums![0]!.checksumValue).toBe(sriToHex(pathInfo.find((i) => i.path === p.packageFileName)!.narHash));
    expect(spdx.relationships).toContainEqual({ spdxElementId: 'SPDXRef-DOCUMENT', relationshipType: 'DESCRIBES', relatedSpdxElement: 'SPDXRef-Image' });
    // Names without a version (busybox-demo) are told, in one line for all, and the component simply has none.
    expect(warnings.split('\n').filter((l) => l.includes('no version'))).toEqual([expect.stringMatching(/^warning: SBOM: \d+ store paths? ha(s|ve) no version in the name \([^)]*busybox-demo[^)]*\); (its component has|their components have) none$/)]);
    expect(storePaths.find((c) => c.name === 'busybox-demo')!.version).toBeUndefined();
  });

  it('states the provenance: the manifest digest as subject, every input by sha256, the flags, the builder', () => {
    const statement = JSON.parse(docs.provenance) as {
      _type: string;
      subject: { digest: { sha256: string } }[];
      predicateType: string;
      predicate: { buildDefinition: { externalParameters: Record<string, unknown>; resolvedDependencies: { name: string; digest: { sha256: string } }[] }; runDetails: { builder: { id: string } } };
    };
    expect(statement._type).toBe('https://in-toto.io/Statement/v1');
    expect(statement.predicateType).toBe('https://slsa.dev/provenance/v1');
    expect(`sha256:${statement.subject[0]!.digest.sha256}`).toBe(summary.manifestDigest);
    const deps = statement.predicate.buildDefinition.resolvedDependencies;
    for (const file of ['layers/demo/demo.closure', 'layers/demo/demo.path-info.json', 'layers/demo/image.json']) {
      expect(deps.find((d) => d.name === join(REPO, file))?.digest.sha256).toBe(sha256File(join(REPO, file)));
    }
    expect(statement.predicate.buildDefinition.externalParameters).toMatchObject({ compression: 'gzip', format: 'oci-archive', sbom: 'both' });
    expect(statement.predicate.runDetails.builder.id).toMatch(/^pkg:npm\/nix2oci@/);
    // An export read from standard input is named `stdin`, by the sha256 of what came in.
    execFileSync('mkdir', [join(dir, 'docs-stdin')]);
    cliOk(['build-image', '--closure', '-', '--output', join(dir, 'stdin.tar'), '-q', '--provenance', '--sbom-dir', join(dir, 'docs-stdin')], {
      input: readFileSync(join(REPO, 'layers/demo/demo.closure')),
    });
    const fromStdin = JSON.parse(readFileSync(join(dir, 'docs-stdin/provenance.intoto.json'), 'utf8')) as typeof statement;
    expect(fromStdin.predicate.buildDefinition.resolvedDependencies).toEqual([
      { name: 'stdin', digest: { sha256: sha256File(join(REPO, 'layers/demo/demo.closure')) }, annotations: { kind: 'closure' } },
    ]);
  });

  it('attaches each document as an OCI 1.1 artifact in index.json, and `nix2oci sbom` prints it back', () => {
    const index = JSON.parse(execFileSync('tar', ['-xOf', archive, 'index.json'], { encoding: 'utf8' })) as { manifests: { digest: string; artifactType?: string; annotations?: Record<string, string> }[] };
    expect(index.manifests[0]!.digest).toBe(summary.manifestDigest);
    expect(index.manifests.slice(1).map((m) => m.artifactType)).toEqual(['application/spdx+json', 'application/vnd.cyclonedx+json', 'application/vnd.in-toto+json']);
    // Only the image has a name: tools that pick an image by name never see an artifact.
    expect(index.manifests.slice(1).every((m) => m.annotations?.['org.opencontainers.image.ref.name'] === undefined)).toBe(true);
    const artifact = JSON.parse(execFileSync('tar', ['-xOf', archive, `blobs/sha256/${index.manifests[1]!.digest.slice(7)}`], { encoding: 'utf8' })) as Record<string, { digest?: string; mediaType?: string }>;
    expect(artifact.subject!.digest).toBe(summary.manifestDigest);
    expect(artifact.config).toMatchObject({ mediaType: 'application/vnd.oci.empty.v1+json', size: 2 });
    expect(cliOk(['sbom', archive]).stdout).toBe(docs.spdx);
    expect(cliOk(['sbom', '--format', 'cyclonedx', layout]).stdout).toBe(docs.cdx);
    expect(cliOk(['sbom', '--format', 'provenance', archive]).stdout).toBe(docs.provenance);
    // The layout's provenance differs in one parameter only: the format asked for.
    const layoutProvenance = cliOk(['sbom', '--format', 'provenance', layout]).stdout;
    expect(layoutProvenance.replace('"format": "oci-layout"', '"format": "oci-archive"')).toBe(docs.provenance);
  });

  it('still loads in podman, skopeo (by name) and umoci with the attachments beside the image', () => {
    const out = podman(['load', '-i', archive]);
    expect(out).toContain(NAME);
    loaded.push(`localhost/${NAME}`);
    for (const source of [`oci-archive:${archive}:${NAME}`, `oci:${layout}:${NAME}`]) {
      const inspected = JSON.parse(execFileSync('skopeo', ['inspect', source], { encoding: 'utf8' })) as { Digest: string };
      expect(inspected.Digest).toBe(summary.manifestDigest);
    }
    const bundle = join(dir, 'bundle');
    execFileSync('umoci', ['unpack', '--rootless', '--image', `${layout}:${NAME}`, bundle], { stdio: 'pipe' });
    expect(readdirSync(join(bundle, 'rootfs'))).toContain('nix');
  });

  it('pushes the documents as referrers to distribution 2.8 (no referrers API) under the referrers tag sha256-<hex>, and reads them back', () => {
    const ref = `${registry.host}/nix2oci/demo:sbom`;
    for (let i = 0; i < 2; i++) cliOk(['push', archive, '--registry', ref, '--tls-verify=false', '-q']);
    const tag = `${registry.host}/nix2oci/demo:${summary.manifestDigest.replace(':', '-')}`;
    const index = JSON.parse(execFileSync('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${tag}`], { encoding: 'utf8' })) as { mediaType: string; manifests: { digest: string; artifactType: string }[] };
    expect(index.mediaType).toBe('application/vnd.oci.image.index.v1+json');
    // Pushed twice, listed once each.
    expect(index.manifests.map((m) => m.digest)).toEqual(summary.attachments.map((a) => a.digest));
    expect(index.manifests.map((m) => m.artifactType)).toEqual(summary.attachments.map((a) => a.artifactType));
    expect(cliOk(['sbom', ref, '--tls-verify=false']).stdout).toBe(docs.spdx);
    expect(cliOk(['sbom', '--format', 'provenance', `${registry.host}/nix2oci/demo@${summary.manifestDigest}`, '--tls-verify=false']).stdout).toBe(docs.provenance);
  });

  it("uses a registry's referrers API where it has one: no referrers tag is written, and the documents are found through the API", async () => {
    const ref = `${fake.host}/nix2oci/demo:sbom`;
    // The fake registry runs in this process: the CLI must run without blocking it.
    const pushed = await cliAsync(['push', archive, '--registry', ref, '--tls-verify=false']);
    expect(pushed.stderr).toContain("the registry's referrers API");
    expect(fake.requests.filter((r) => r.startsWith('PUT') && r.includes('/manifests/sha256-'))).toEqual([]);
    expect((await cliAsync(['sbom', '--format', 'cyclonedx', ref, '--tls-verify=false'])).stdout).toBe(docs.cdx);
    expect(fake.requests).toContain(`GET /v2/nix2oci/demo/referrers/${summary.manifestDigest}`);
  });

  it('rebuilds an SBOM from the layers of an image built without one, saying what it lacks; a docker-archive carries no attachments', async () => {
    const plain = join(dir, 'plain-layout');
    cliOk(['build-image', ...DEMO, '--output', plain, '--format', 'oci-layout', '-q']);
    const rebuilt = runCli(['sbom', plain]);
    expect(rebuilt.code).toBe(0);
    expect(rebuilt.stderr).toMatch(/no SBOM attached; this one is rebuilt from what its layers hold/);
    expect(spdxErrors(rebuilt.stdout)).toBeNull();
    const names = (JSON.parse(rebuilt.stdout) as SpdxDoc).packages.flatMap((p) => (p.packageFileName ? [p.packageFileName] : []));
    expect(names.sort()).toEqual(JSON.parse(readFileSync(join(REPO, 'layers/demo/demo.path-info.json'), 'utf8')).map((p: { path: string }) => p.path).sort());
    expect(await cyclonedxErrors(cliOk(['sbom', '--format', 'cyclonedx', plain]).stdout)).toBeNull();
    // The same from a registry: no referrers, so the manifest's contents annotations speak.
    const ref = `${registry.host}/nix2oci/plain:latest`;
    cliOk(['push', plain, '--registry', ref, '--tls-verify=false', '-q']);
    const remote = runCli(['sbom', ref, '--tls-verify=false']);
    expect(remote.stderr).toMatch(/no SBOM attached/);
    expect((JSON.parse(remote.stdout) as SpdxDoc).packages.flatMap((p) => (p.packageFileName ? [p.packageFileName] : [])).sort()).toEqual(names.sort());

    const dockerArchive = join(dir, 'demo-docker.tar');
    const docker = runCli(['build-image', ...DEMO, '--output', dockerArchive, '--format', 'docker-archive', '-q', '--sbom', 'spdx']);
    expect(docker.code).toBe(0);
    expect(docker.stderr).toContain('a docker-archive has no place for attachments');
    // A docker-archive's manifest names no contents: its layers are read for their store paths.
    const fromDocker = JSON.parse(cliOk(['sbom', dockerArchive]).stdout) as SpdxDoc;
    expect(fromDocker.packages.flatMap((p) => (p.packageFileName ? [p.packageFileName] : [])).sort()).toEqual(names);
  });

  it('refuses an unknown SBOM format in the recipe or on the command line with one line, and writes nothing', () => {
    const recipe = join(dir, 'bad-recipe.json');
    writeFileSync(recipe, JSON.stringify({ ...JSON.parse(readFileSync(join(REPO, 'layers/demo/image.json'), 'utf8')), sbom: 'xml' }));
    const out = join(dir, 'never.tar');
    const bad = runCli(['build-image', '--closure', join(REPO, 'layers/demo/demo.closure'), '--recipe', recipe, '--output', out]);
    expect(bad.code).toBe(1);
    expect(bad.stderr.trim().split('\n')).toHaveLength(1);
    expect(bad.stderr).toMatch(/sbom/);
    expect(readdirSync(dir)).not.toContain('never.tar');
    const lonely = runCli(['build-image', ...DEMO, '--output', out, '--sbom-dir', dir]);
    expect([lonely.code, lonely.stderr]).toEqual([1, "nix2oci: --sbom-dir needs --sbom or --provenance (or the recipe's sbom or provenance)\n"]);
    const flag = runCli(['build-image', ...DEMO, '--output', out, '--sbom', 'xml']);
    expect(flag.code).not.toBe(0);
    expect(flag.stderr).toMatch(/--sbom <format>.*'xml' is invalid/);
  });
});
