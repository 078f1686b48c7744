import { rmSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CONTENTS_ANNOTATION, MAX_CONTENTS_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION, assembleImage, manifestDigest } from '../../src/model/assemble.js';
import { MediaTypes } from '../../src/model/image.js';
import { normalizeTag, qualifiedName } from '../../src/model/reference.js';
import { UserError } from '../../src/util/errors.js';
import { demoConfig, demoLayers, storeName, tempDir } from '../output/fixtures.js';

let dir: string;
let layers: Awaited<ReturnType<typeof demoLayers>>;
beforeAll(async () => {
  dir = tempDir();
  layers = await demoLayers(dir);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const created = new Date(1_700_000_000_000);

describe('assembleImage', () => {
  it('builds an OCI manifest naming the config and the layer blobs, with contents annotations', () => {
    const { image, warnings } = assembleImage({ layers, config: demoConfig(), created, tags: ['nix2oci/demo'] });
    expect(warnings).toEqual([]);
    const manifest = JSON.parse(image.manifestBytes.toString());
    expect(Object.keys(manifest)).toEqual(['schemaVersion', 'mediaType', 'config', 'layers']);
    expect(manifest.mediaType).toBe(MediaTypes.ociManifest);
    expect(manifest.config).toEqual({ mediaType: MediaTypes.ociConfig, digest: image.configDescriptor.digest, size: image.configBytes.length });
    expect(manifest.layers.map((l: { digest: string }) => l.digest)).toEqual(layers.map((l) => l.descriptor.digest));
    expect(manifest.layers[0].mediaType).toBe(MediaTypes.ociLayerGzip);
    expect(manifest.layers[1].annotations).toEqual({
      [CONTENTS_ANNOTATION]: [...layers[1]!.contents].sort().join('\n'),
      [UNCOMPRESSED_SIZE_ANNOTATION]: String(layers[1]!.uncompressedSize),
    });
    const config = JSON.parse(image.configBytes.toString());
    expect(config.rootfs.diff_ids).toEqual(layers.map((l) => l.diffId));
    expect(config.history).toHaveLength(2);
    expect(image.tags).toEqual(['nix2oci/demo:latest']);
    expect(image.layers[0]!.contents).toEqual(layers[0]!.contents);
  });

  it('is deterministic: same inputs, same manifest digest', () => {
    const a = assembleImage({ layers, config: demoConfig(), created, tags: [] }).image;
    const b = assembleImage({ layers, config: demoConfig(), created, tags: ['other:tag'] }).image;
    expect(manifestDigest(a)).toBe(manifestDigest(b));
    const later = assembleImage({ layers, config: demoConfig(), created: new Date(created.getTime() + 1000), tags: [] }).image;
    expect(manifestDigest(later)).not.toBe(manifestDigest(a));
  });

  it('uses Docker media types, without annotations, for a docker-archive', () => {
    const { image } = assembleImage({ layers, config: demoConfig(), created, tags: [], format: 'docker-archive' });
    const manifest = JSON.parse(image.manifestBytes.toString());
    expect(image.manifestMediaType).toBe(MediaTypes.dockerManifest);
    expect(manifest.mediaType).toBe(MediaTypes.dockerManifest);
    expect(manifest.config.mediaType).toBe(MediaTypes.dockerConfig);
    expect(manifest.layers.map((l: { mediaType: string }) => l.mediaType)).toEqual([MediaTypes.dockerLayerGzip, MediaTypes.dockerLayerGzip]);
    expect(manifest.layers[0]).not.toHaveProperty('annotations');
  });

  it('warns that podman ignores a healthcheck in OCI images, not in docker archives', () => {
    const config = demoConfig({ healthcheck: { test: ['CMD', 'true'] } });
    expect(assembleImage({ layers, config, created, tags: [], format: 'oci-archive' }).warnings).toEqual([
      expect.stringMatching(/healthcheck .*podman ignores it in oci-archive images/),
    ]);
    expect(assembleImage({ layers, config, created, tags: [], format: 'docker-archive' }).warnings).toEqual([]);
  });

  it('leaves out a contents annotation too large for a manifest', () => {
    const many = Array.from({ length: 2000 }, (_, i) => `/nix/store/${storeName(String(i), `package-${i}`)}`);
    expect(many.join('\n').length).toBeGreaterThan(MAX_CONTENTS_ANNOTATION);
    const { image } = assembleImage({ layers: [{ ...layers[0]!, contents: many }], config: demoConfig(), created, tags: [] });
    expect(image.layers[0]!.descriptor.annotations).not.toHaveProperty(CONTENTS_ANNOTATION);
    expect(image.layers[0]!.contents).toHaveLength(2000);
  });

  it('refuses an invalid tag with a UserError', () => {
    expect(() => assembleImage({ layers, config: demoConfig(), created, tags: ['Upper/Case'] })).toThrow(UserError);
    expect(() => assembleImage({ layers, config: demoConfig(), created, tags: ['demo@sha256:abc'] })).toThrow(/digest/);
  });

  it('streams each layer from its blob file', async () => {
    const { image } = assembleImage({ layers, config: demoConfig(), created, tags: [] });
    let bytes = 0;
    for await (const chunk of image.layers[1]!.open()) bytes += (chunk as Buffer).length;
    expect(bytes).toBe(layers[1]!.descriptor.size);
    let tail = 0;
    for await (const chunk of image.layers[1]!.open(100)) tail += (chunk as Buffer).length;
    expect(tail).toBe(layers[1]!.descriptor.size - 100);
  });
});

describe('names', () => {
  it('completes and qualifies tags as Docker does', () => {
    expect(normalizeTag('demo')).toBe('demo:latest');
    expect(normalizeTag('localhost:5000/team/app:1.0')).toBe('localhost:5000/team/app:1.0');
    expect(qualifiedName('demo:1')).toBe('docker.io/library/demo:1');
    expect(qualifiedName('nix2oci/demo')).toBe('docker.io/nix2oci/demo:latest');
    expect(qualifiedName('registry.example:5000/a/b:c')).toBe('registry.example:5000/a/b:c');
    expect(() => normalizeTag('demo:bad tag')).toThrow(UserError);
    expect(() => normalizeTag('demo:')).toThrow(UserError);
  });
});
