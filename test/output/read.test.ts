import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, truncateSync, unlinkSync, writeFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { manifestDigest } from '../../src/model/assemble.js';
import { MediaTypes, type Image, type Layer } from '../../src/model/image.js';
import { readImage } from '../../src/output/read.js';
import { indexTar } from '../../src/tar/reader.js';
import { writeImage, type OutputFormat } from '../../src/output/write.js';
import { UserError } from '../../src/util/errors.js';
import { tools } from '../helpers/tools.js';
import { blobBytes } from '../helpers/blobs.js';
import { demoImage, demoLayers, run, tempDir } from './fixtures.js';

let dir: string;
let layers: Awaited<ReturnType<typeof demoLayers>>;
beforeAll(async () => {
  dir = tempDir();
  layers = await demoLayers(dir);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function layerDigest(layer: Layer): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of layer.open()) hash.update(chunk as Buffer);
  return `sha256:${hash.digest('hex')}`;
}

async function expectSameImage(read: Image, written: Image): Promise<void> {
  expect(manifestDigest(read)).toBe(manifestDigest(written));
  expect(read.manifestBytes.equals(written.manifestBytes)).toBe(true);
  expect(read.manifestMediaType).toBe(written.manifestMediaType);
  expect(read.configBytes.equals(written.configBytes)).toBe(true);
  expect(read.configDescriptor).toEqual(written.configDescriptor);
  expect(read.tags).toEqual(written.tags);
  expect(read.layers.map((l) => l.descriptor)).toEqual(written.layers.map((l) => l.descriptor));
  expect(read.layers.map((l) => l.diffId)).toEqual(written.layers.map((l) => l.diffId));
  for (const layer of read.layers) expect(await layerDigest(layer)).toBe(layer.descriptor.digest);
}

describe('readImage round trip', () => {
  it.each(['oci-archive', 'oci-layout', 'docker-archive'] as OutputFormat[])('reads back %s as the same image', async (format) => {
    const { image } = await demoImage(dir, { layers, format, tags: ['nix2oci-test/read:one'] });
    const out = join(dir, `round-${format}`);
    await writeImage(image, { format, output: out });
    const read = await readImage(out);
    await expectSameImage(read, image);
    if (format !== 'docker-archive') expect(read.layers.map((l) => l.contents)).toEqual(image.layers.map((l) => l.contents));
    // Partial reads are byte ranges of the archive: the tail of a layer is the tail of its blob.
    const tail: Buffer[] = [];
    for await (const chunk of read.layers[0]!.open(1000)) tail.push(chunk as Buffer);
    expect(Buffer.concat(tail).equals(blobBytes(layers[0]!).subarray(1000))).toBe(true);
  });

  it('reads an uncompressed docker-archive with the layers as their own digests', async () => {
    const plain = await demoLayers(dir, 'none');
    const { image } = await demoImage(dir, { layers: plain, format: 'docker-archive' });
    const out = join(dir, 'plain-docker.tar');
    await writeImage(image, { format: 'docker-archive', output: out });
    const read = await readImage(out);
    await expectSameImage(read, image);
    expect(read.layers.map((l) => l.descriptor.mediaType)).toEqual([MediaTypes.dockerLayer, MediaTypes.dockerLayer]);
    expect(read.layers.map((l) => l.uncompressedSize)).toEqual(plain.map((l) => l.uncompressedSize));
  });

  it('picks an image by tag, and reads every tag of one manifest as one image', async () => {
    const { image } = await demoImage(dir, { layers, tags: ['nix2oci-test/read:a', 'nix2oci-test/read:b'] });
    const out = join(dir, 'two-tags.tar');
    await writeImage(image, { format: 'oci-archive', output: out });
    expect((await readImage(out)).tags).toEqual(['nix2oci-test/read:a', 'nix2oci-test/read:b']);
    expect(manifestDigest(await readImage(out, { tag: 'nix2oci-test/read:b' }))).toBe(manifestDigest(image));
    await expect(readImage(out, { tag: 'nix2oci-test/read:c' })).rejects.toThrow(/holds no image named nix2oci-test\/read:c/);
    // Names match as Docker resolves them.
    expect((await readImage(out, { tag: 'docker.io/nix2oci-test/read:a' })).tags).toContain('nix2oci-test/read:a');
  });
});

describe.runIf(tools('skopeo'))('readImage reads what skopeo writes', () => {
  let ours: string;
  let image: Image;
  beforeAll(async () => {
    ({ image } = await demoImage(dir, { layers, tags: ['nix2oci-test/interop:1'] }));
    ours = join(dir, 'interop.tar');
    await writeImage(image, { format: 'oci-archive', output: ours });
  });

  it('an OCI layout directory (same manifest, so the same digest)', async () => {
    const layout = join(dir, 'skopeo-layout');
    run('skopeo', ['copy', '-q', `oci-archive:${ours}`, `oci:${layout}:v1`]);
    const read = await readImage(layout);
    expect(manifestDigest(read)).toBe(manifestDigest(image));
    expect(read.tags).toEqual(['v1']);
  });

  it('an oci-archive without manifest.json', async () => {
    const archive = join(dir, 'skopeo-oci.tar');
    run('skopeo', ['copy', '-q', `oci-archive:${ours}`, `oci-archive:${archive}:nix2oci-test/interop:2`]);
    const read = await readImage(archive);
    expect(read.configBytes.equals(image.configBytes)).toBe(true);
    expect(read.tags).toEqual(['nix2oci-test/interop:2']);
  });

  it('a docker-archive with uncompressed layers, which converts back to an oci-archive skopeo reads', async () => {
    const archive = join(dir, 'skopeo-docker.tar');
    run('skopeo', ['copy', '-q', `oci-archive:${ours}`, `docker-archive:${archive}:nix2oci-test/interop:3`]);
    const read = await readImage(archive);
    expect(read.configBytes.equals(image.configBytes)).toBe(true);
    expect(read.tags).toEqual(['docker.io/nix2oci-test/interop:3']);
    expect(read.manifestMediaType).toBe(MediaTypes.dockerManifest);
    expect(read.layers.map((l) => l.descriptor.digest)).toEqual(image.layers.map((l) => l.diffId));
    for (const layer of read.layers) expect(await layerDigest(layer)).toBe(layer.descriptor.digest);

    const converted = join(dir, 'converted.tar');
    await writeImage(read, { format: 'oci-archive', output: converted });
    const inspected = JSON.parse(run('skopeo', ['inspect', `oci-archive:${converted}`]));
    expect(inspected.Digest).toBe(manifestDigest(read));
    expect(inspected.Layers).toEqual(image.layers.map((l) => l.diffId));
  });
});

describe('readImage refuses what it cannot read, in one line', () => {
  let layout: string;
  let image: Image;
  beforeAll(async () => {
    ({ image } = await demoImage(dir, { layers }));
    layout = join(dir, 'pristine-layout');
    await writeImage(image, { format: 'oci-layout', output: layout });
  });
  const copyLayout = (name: string) => {
    const copy = join(dir, name);
    execFileSync('cp', ['-a', layout, copy]);
    return copy;
  };
  const refuses = async (path: string, message: RegExp) => {
    const attempt = readImage(path);
    await expect(attempt).rejects.toThrow(UserError);
    await expect(attempt).rejects.toThrow(message);
    const err = await attempt.catch((e: Error) => e);
    expect(String((err as Error).message)).not.toContain('\n');
  };

  it('a missing path', () => refuses(join(dir, 'nope.tar'), /nope\.tar: no such file or directory/));

  it('a file that is not a tar', async () => {
    const file = join(dir, 'text.tar');
    writeFileSync(file, 'hello, this is not a tar archive at all'.repeat(20));
    await refuses(file, /text\.tar: not a tar archive \(bad header checksum\) at byte 0/);
    const empty = join(dir, 'empty.tar');
    writeFileSync(empty, '');
    await refuses(empty, /empty file, not a tar archive/);
  });

  it('a gzip-compressed archive', async () => {
    const ours = join(dir, 'for-gzip.tar');
    await writeImage(image, { format: 'docker-archive', output: ours });
    const gz = join(dir, 'image.tar.gz');
    writeFileSync(gz, gzipSync(readFileSync(ours)));
    await refuses(gz, /image\.tar\.gz is gzip-compressed; decompress it first/);
  });

  it('a truncated archive, naming the member and offset', async () => {
    const file = join(dir, 'truncated.tar');
    await writeImage(image, { format: 'oci-archive', output: file });
    truncateSync(file, 5000);
    await refuses(file, /truncated.tar: archive is truncated: member "blobs\/sha256\/[0-9a-f]{64}" needs \d+ bytes at byte \d+/);
  });

  it('a tar that is no image', async () => {
    const src = join(dir, 'plain-files');
    mkdirSync(src);
    writeFileSync(join(src, 'readme.txt'), 'hi');
    const file = join(dir, 'plain.tar');
    execFileSync('tar', ['-cf', file, '-C', src, '.']);
    await refuses(file, /plain\.tar is not an OCI archive, Docker archive or OCI layout/);
  });

  it('a layout with a missing layer blob', async () => {
    const copy = copyLayout('missing-blob');
    unlinkSync(join(copy, 'blobs/sha256', image.layers[1]!.descriptor.digest.slice(7)));
    await refuses(copy, /layer 2 blob blobs\/sha256\/[0-9a-f]{64} is missing/);
  });

  it('a layout whose manifest does not match its digest', async () => {
    const copy = copyLayout('tampered');
    const manifestFile = join(copy, 'blobs/sha256', manifestDigest(image).slice(7));
    writeFileSync(manifestFile, readFileSync(manifestFile, 'utf8').replace('"schemaVersion":2', '"schemaVersion":2 '));
    await refuses(copy, /manifest blobs\/sha256\/[0-9a-f]{64} does not match its descriptor/);
  });

  it('an index with two different images and no tag to choose', async () => {
    const copy = copyLayout('two-images');
    const other = (await demoImage(dir, { layers, created: new Date(0), tags: ['nix2oci-test/other:1'] })).image;
    const otherLayout = join(dir, 'other-layout');
    await writeImage(other, { format: 'oci-layout', output: otherLayout });
    execFileSync('sh', ['-c', `cp ${otherLayout}/blobs/sha256/* ${copy}/blobs/sha256/`]);
    const index = JSON.parse(readFileSync(join(copy, 'index.json'), 'utf8'));
    index.manifests.push(...JSON.parse(readFileSync(join(otherLayout, 'index.json'), 'utf8')).manifests);
    writeFileSync(join(copy, 'index.json'), JSON.stringify(index));
    await refuses(copy, /holds 2 images; choose one by name \(nix2oci-test\/demo:latest; nix2oci-test\/other:1\)/);
    expect(manifestDigest(await readImage(copy, { tag: 'nix2oci-test/other:1' }))).toBe(manifestDigest(other));
  });

  it('a docker manifest.json naming files outside the archive', async () => {
    const copy = copyLayout('escape');
    rmSync(join(copy, 'index.json'));
    writeFileSync(join(copy, 'manifest.json'), JSON.stringify([{ Config: '../../etc/passwd', RepoTags: [], Layers: [] }]));
    await refuses(copy, /manifest\.json names a file outside the archive: \.\.\/\.\.\/etc\/passwd/);
  });

  it('an index that is not JSON', async () => {
    const copy = copyLayout('bad-json');
    writeFileSync(join(copy, 'index.json'), '{"schemaVersion":2,');
    await refuses(copy, /index\.json is not valid JSON/);
  });
});

describe('indexTar', () => {
  it('locates members behind PAX and GNU long names', async () => {
    const src = join(dir, 'long-names');
    const deep = join(src, 'a'.repeat(60), 'b'.repeat(60));
    mkdirSync(deep, { recursive: true });
    const body = 'x'.repeat(1500);
    writeFileSync(join(deep, `${'c'.repeat(120)}.txt`), body);
    const name = `${'a'.repeat(60)}/${'b'.repeat(60)}/${'c'.repeat(120)}.txt`;
    for (const format of ['posix', 'gnu']) {
      const file = join(dir, `long-${format}.tar`);
      execFileSync('tar', [`--format=${format}`, '-cf', file, '-C', src, '.']);
      const members = await indexTar(file);
      const member = members.get(name);
      expect(member, format).toMatchObject({ type: 'file', size: 1500 });
      expect(readFileSync(file).subarray(member!.offset, member!.offset + member!.size).toString()).toBe(body);
      expect(members.get('a'.repeat(60))?.type).toBe('directory');
      expect(statSync(file).size).toBeGreaterThan(member!.offset);
    }
  });
});
