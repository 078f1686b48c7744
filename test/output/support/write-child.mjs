// Child process for the interruption test: writes an image read from an OCI layout, with the last
// layer's stream stalling after one byte, and stops on SIGINT the way the CLI does.
import { Readable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { join } from 'node:path';

const [compiled, layout, format, output] = process.argv.slice(2);
const load = (module) => import(pathToFileURL(join(compiled, module)).href);
const { readImage } = await load('output/read.js');
const { writeImage } = await load('output/write.js');
const { runCleanups } = await load('util/cleanup.js');

process.once('SIGINT', () => {
  runCleanups();
  process.exit(130);
});

const image = await readImage(layout);
const last = image.layers.length - 1;
const stalling = () =>
  Readable.from(
    (async function* () {
      yield Buffer.alloc(1);
      process.stdout.write('stalled\n');
      await new Promise(() => setInterval(() => {}, 1000));
    })(),
  );
const layers = image.layers.map((layer, i) => (i === last ? { ...layer, open: stalling } : layer));
await writeImage({ ...image, layers }, { format, output });
