import { join, resolve } from 'node:path';
import { buildImage, DEFAULT_SOURCE_DATE_EPOCH } from '../../../src/pipeline/build-image.js';
import type { Image } from '../../../src/model/image.js';
import { readImage } from '../../../src/output/read.js';

const demo = resolve(import.meta.dirname, '../../../layers/demo');

/** What the demo image prints when run (its entrypoint, /nix/store/…-demo-app/bin/hello). */
export const DEMO_OUTPUT = 'hello from nix2oci\nserved from a Nix store path\n';

/**
 * The project's demo image, built by build-image from layers/demo (a static busybox, a data path
 * and an app) into an OCI layout under `dir`, and read back as push reads any SOURCE.
 */
export async function buildDemoImage(dir: string): Promise<Image> {
  const output = join(dir, 'demo-layout');
  await buildImage({
    closures: [join(demo, 'demo.closure')],
    pathInfo: join(demo, 'demo.path-info.json'),
    recipe: join(demo, 'image.json'),
    overrides: {},
    wheels: [],
    depsCheck: true,
    output,
    format: 'oci-layout',
    tags: [],
    sourceDateEpoch: DEFAULT_SOURCE_DATE_EPOCH,
    cacheDir: null,
    log: () => {},
    warn: () => {},
  });
  return readImage(output);
}
