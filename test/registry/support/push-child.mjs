// Runs a push (as the CLI does, with its display) from compiled sources on an OCI layout, in a process a test can kill.
// Usage: node push-child.mjs OUT_DIR LAYOUT_DIR REFERENCE OPTIONS_JSON
import { createReadStream, readFileSync } from 'node:fs';
import { join } from 'node:path';

const [outDir, layout, reference, optionsJson] = process.argv.slice(2);
const { pushAndShow } = await import(join(outDir, 'cli', 'push-progress.js'));

const blobPath = (digest) => join(layout, 'blobs', 'sha256', digest.slice('sha256:'.length));
const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8'));
const manifestBytes = readFileSync(blobPath(index.manifests[0].digest));
const manifest = JSON.parse(manifestBytes.toString('utf8'));
const image = {
  manifestBytes,
  manifestMediaType: index.manifests[0].mediaType,
  configBytes: readFileSync(blobPath(manifest.config.digest)),
  configDescriptor: manifest.config,
  layers: manifest.layers.map((descriptor) => ({
    descriptor,
    diffId: descriptor.digest,
    compression: descriptor.mediaType.endsWith('gzip') ? 'gzip' : 'none',
    contents: [],
    open: (start = 0) => createReadStream(blobPath(descriptor.digest), { start }),
  })),
  tags: [],
};
try {
  const result = await pushAndShow(image, reference, { progress: 'plain', ...JSON.parse(optionsJson) });
  process.stderr.write(`RESULT ${JSON.stringify(result)}\n`);
} catch (err) {
  process.stderr.write(`nix2oci: ${err.message}\n`);
  process.exitCode = 1;
}
