// Runs pushImage from compiled sources on an OCI layout, in a process a test can kill.
// Usage: node push-child.mjs OUT_DIR LAYOUT_DIR REFERENCE OPTIONS_JSON
import { createReadStream, readFileSync } from 'node:fs';
import { join } from 'node:path';

const [outDir, layout, reference, optionsJson] = process.argv.slice(2);
const { pushImage } = await import(join(outDir, 'registry', 'push.js'));

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
    open: (start = 0) => createReadStream(blobPath(descriptor.digest), { start }),
  })),
  tags: [],
};
try {
  const result = await pushImage(image, reference, { progress: 'plain', ...JSON.parse(optionsJson) });
  process.stderr.write(`RESULT ${JSON.stringify(result)}\n`);
} catch (err) {
  process.stderr.write(`nix2oci: ${err.message}\n`);
  process.exitCode = 1;
}
