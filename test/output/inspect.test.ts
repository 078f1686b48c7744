import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { manifestDigest } from '../../src/model/assemble.js';
import { describeImage, formatImageDescription } from '../../src/cli/inspect.js';
import { asLayer } from '../helpers/layers.js';
import { readImage } from '../../src/output/read.js';
import { writeImage } from '../../src/output/write.js';
import { BUSYBOX_PATH, DATA_PATH, demoImage, demoLayers, makeLayer, tempDir } from './fixtures.js';

let dir: string;
let layers: Awaited<ReturnType<typeof demoLayers>>;
beforeAll(async () => {
  dir = tempDir();
  layers = await demoLayers(dir);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('describeImage', () => {
  it('lists each layer with digest, sizes and the store paths its annotation records', async () => {
    const { image } = await demoImage(dir, { layers, tags: ['nix2oci-test/inspect:1'] });
    const file = join(dir, 'annotated.tar');
    await writeImage(image, { format: 'oci-archive', output: file });
    const described = await describeImage(await readImage(file));
    expect(described).toMatchObject({
      manifestDigest: manifestDigest(image),
      tags: ['nix2oci-test/inspect:1'],
      size: layers[0]!.descriptor.size + layers[1]!.descriptor.size,
      uncompressedSize: layers[0]!.uncompressedSize! + layers[1]!.uncompressedSize!,
      config: {
        digest: image.configDescriptor.digest,
        architecture: 'amd64',
        os: 'linux',
        entrypoint: [`${BUSYBOX_PATH}/bin/busybox`],
        env: [`PATH=${BUSYBOX_PATH}/bin:/bin`, 'GREETING=hi'],
        exposedPorts: ['53/udp', '8000/tcp'],
      },
    });
    expect(described.layers).toEqual([
      {
        digest: layers[0]!.descriptor.digest,
        mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
        size: layers[0]!.descriptor.size,
        compression: 'gzip',
        uncompressedSize: layers[0]!.uncompressedSize,
        diffId: layers[0]!.diffId,
        contents: [BUSYBOX_PATH],
        contentsFrom: 'annotation',
      },
      expect.objectContaining({ contents: [DATA_PATH, 'image-root'].sort(), contentsFrom: 'annotation' }),
    ]);
    // JSON output is the object itself: it must survive a round trip unchanged.
    expect(JSON.parse(JSON.stringify(described))).toEqual(described);
  });

  it('reads the layers for store paths and sizes when the archive has no annotations', async () => {
    const { image } = await demoImage(dir, { layers, format: 'docker-archive' });
    const file = join(dir, 'docker.tar');
    await writeImage(image, { format: 'docker-archive', output: file });
    const described = await describeImage(await readImage(file));
    expect(described.layers.map((l) => [l.contentsFrom, l.contents, l.uncompressedSize, l.problems])).toEqual([
      ['scan', [BUSYBOX_PATH], layers[0]!.uncompressedSize, undefined],
      ['scan', [DATA_PATH], layers[1]!.uncompressedSize, undefined],
    ]);
    expect(described.layers[1]!.topLevel).toEqual(['bin', 'nix', 'tmp']);

    const unscanned = await describeImage(await readImage(file), { scan: false });
    expect(unscanned.layers[0]).toMatchObject({ contents: [], contentsFrom: 'unknown' });
    expect(unscanned).not.toHaveProperty('uncompressedSize');
  });

  it('reports a layer whose content does not match the diffID in the config', async () => {
    const { image } = await demoImage(dir, { layers, format: 'docker-archive' });
    const wrong = { ...image, layers: [{ ...image.layers[0]!, diffId: layers[1]!.diffId, contents: [] }, image.layers[1]!] };
    const described = await describeImage(wrong);
    expect(described.layers[0]!.problems).toEqual([expect.stringMatching(/uncompressed layer's digest is sha256:[0-9a-f]{64}, but the config says/)]);
  });

  it('shows what a layer without store paths holds', async () => {
    const root = await makeLayer(dir, [
      { type: 'directory', name: 'etc' },
      { type: 'file', name: 'etc/passwd', text: 'root:x:0:0::/root:/bin/sh\n' },
    ]);
    const { image } = await demoImage(dir, { layers: [asLayer(root, [])], format: 'docker-archive' });
    const described = await describeImage({ ...image, layers: image.layers.map((l) => ({ ...l, contents: [] })) });
    expect(formatImageDescription(described)).toContain('(no store paths; top level: etc)');
  });
});

describe('formatImageDescription', () => {
  it('prints the digest, tags, config summary and one block per layer', async () => {
    const { image } = await demoImage(dir, { layers, tags: ['nix2oci-test/inspect:text'] });
    const text = formatImageDescription(await describeImage(image));
    const lines = text.split('\n');
    expect(lines[0]).toBe(`Image       ${manifestDigest(image)}  (OCI manifest)`);
    expect(lines[1]).toBe('Tags        nix2oci-test/inspect:text');
    expect(text).toContain(`Entrypoint  ["${BUSYBOX_PATH}/bin/busybox"]`);
    expect(text).toContain('Ports       53/udp, 8000/tcp');
    expect(text).toMatch(/^Layers: 2 \(1\.\d MiB, 1\.\d MiB uncompressed\)$/m);
    expect(text).toContain(`  1  ${layers[0]!.descriptor.digest}  `);
    expect(text).toContain(`     diffID ${layers[0]!.diffId}`);
    expect(text).toContain(`     ${BUSYBOX_PATH}\n`);
    expect(text.endsWith('\n')).toBe(true);
  });
});
