import { createWriteStream } from 'node:fs';
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, createReadStream } from 'node:fs';
import { join } from 'node:path';
import { PassThrough, Readable, Writable } from 'node:stream';
import tar, { type Header } from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Image } from '../../src/model/image.js';
import { openOutput, writeImage, type OutputFormat } from '../../src/output/write.js';
import { writeLayer as writeLayerAt } from '../../src/layer/writer.js';
import { tarSize } from '../../src/tar/writer.js';
import type { LayerSource } from '../../src/layer/types.js';
import type { Layer } from '../../src/model/image.js';
import { BlobCheckError } from '../../src/output/archive-file.js';
import { runCleanups } from '../../src/util/cleanup.js';
import { UserError } from '../../src/util/errors.js';
import { demoConfig, demoImage, tempDir } from './fixtures.js';
import { assembleImage } from '../../src/model/assemble.js';

let dir: string;
let image: Image;
beforeAll(async () => {
  dir = tempDir();
  ({ image } = await demoImage(dir, { tags: ['nix2oci-test/write:1', 'nix2oci-test/write:latest'] }));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const sha256 = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');

async function tarHeaders(file: string): Promise<Header[]> {
  const headers: Header[] = [];
  const extract = tar.extract();
  extract.on('entry', (header, body, next) => {
    headers.push(header);
    body.on('end', () => next());
    body.resume();
  });
  await new Promise<void>((resolve, reject) => {
    extract.on('finish', resolve);
    extract.on('error', reject);
    createReadStream(file).pipe(extract as unknown as NodeJS.WritableStream);
  });
  return headers;
}

/** An image whose second layer's stream fails after some bytes (a disk error, a vanished file). */
function withFailingLayer(onOpen?: () => void): Image {
  const layers = image.layers.map((layer, i) =>
    i === 1
      ? {
          ...layer,
          // Without pieces, writers stream the blob through `open` (the path for blobs read from archives).
          pieces: undefined,
          open: () =>
            Readable.from(
              (async function* () {
                yield Buffer.alloc(10);
                onOpen?.();
                await new Promise((r) => setTimeout(r, 20));
                throw new Error('disk on fire');
              })(),
            ),
        }
      : layer,
  );
  return { ...image, layers };
}

/** An empty output directory named `name`, the image's first layer and its one file piece, and a path for a copy of that file. */
function firstLayerCopy(name: string) {
  const parent = join(dir, name);
  mkdirSync(parent);
  const [first, ...rest] = image.layers;
  const piece = first!.pieces![0]!;
  if ('bytes' in piece) throw new Error('expected a file piece');
  return { parent, first: first!, rest, piece, copy: join(dir, `${name}.blob`) };
}

describe.each(['oci-archive', 'docker-archive', 'oci-layout'] as OutputFormat[])('writeImage %s', (format) => {
  it('leaves no output and no temporary file when a blob fails', async () => {
    const out = join(dir, `failing-${format}`);
    mkdirSync(out + '.d');
    const target = join(out + '.d', 'image');
    await expect(writeImage(withFailingLayer(), { format, output: target })).rejects.toThrow(/disk on fire/);
    expect(readdirSync(out + '.d')).toEqual([]);
  });

  it('leaves nothing when a blob is shorter than its descriptor says', async () => {
    const parent = join(dir, `short-${format}`);
    mkdirSync(parent);
    const [first, ...rest] = image.layers;
    const short = { ...image, layers: [{ ...first!, descriptor: { ...first!.descriptor, size: first!.descriptor.size + 1 } }, ...rest] };
    await expect(writeImage(short, { format, output: join(parent, 'image') })).rejects.toThrow(/bytes/);
    expect(readdirSync(parent)).toEqual([]);
  });

  it('leaves nothing when a blob file is shorter than its pieces say', async () => {
    const { parent, first, rest, piece, copy } = firstLayerCopy(`truncated-${format}`);
    writeFileSync(copy, readFileSync(piece.file).subarray(0, piece.length - 100));
    // One file piece of the whole size, so an oci-layout cannot link it whole either.
    const broken = { ...image, layers: [{ ...first, pieces: [{ file: copy, start: 0, length: piece.length }] }, ...rest] };
    await expect(writeImage(broken, { format, output: join(parent, 'image') })).rejects.toThrow(/ends at byte|bytes/);
    expect(readdirSync(parent)).toEqual([]);
  });

  it('checks a blob marked verify against its digest while copying it, and leaves nothing when it differs', async () => {
    const { parent, first, rest, piece, copy } = firstLayerCopy(`verify-${format}`);
    const flipped = Buffer.from(readFileSync(piece.file));
    flipped[flipped.length - 30] ^= 0x01;
    writeFileSync(copy, flipped);
    const cannotRepair = { repair: async (): Promise<never> => { throw new Error('its inputs are gone'); } };
    const damaged = { ...image, layers: [{ ...first, pieces: [{ ...piece, file: copy }], unverified: cannotRepair }, ...rest] };
    const error = await writeImage(damaged, { format, output: join(parent, 'image') }).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(BlobCheckError);
    expect((error as BlobCheckError).digest).toBe(first.descriptor.digest);
    expect(readdirSync(parent)).toEqual([]);
    if (format !== 'oci-layout') {
      // To standard output, nothing is sent before the check.
      let sent = 0;
      const stdout = new Writable({ write: (chunk: Buffer, _e, done) => ((sent += chunk.length), done()) });
      await expect(writeImage(damaged, { format, output: '-', stdout })).rejects.toBeInstanceOf(BlobCheckError);
      expect(sent).toBe(0);
    }
    // The same bytes, intact and marked verify, go through.
    writeFileSync(copy, readFileSync(piece.file));
    await writeImage(damaged, { format, output: join(parent, 'image') });
  });

  it('removes its temporary output when the process is stopped mid-write', async () => {
    const parent = join(dir, `stopped-${format}`);
    mkdirSync(parent);
    let seen: string[] = [];
    // What the CLI's SIGINT handler does before exiting: run the registered cleanups.
    const stopped = withFailingLayer(() => {
      seen = readdirSync(parent);
      runCleanups();
    });
    await expect(writeImage(stopped, { format, output: join(parent, 'image') })).rejects.toThrow();
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatch(/^\.image\./);
    expect(readdirSync(parent)).toEqual([]);
  });
});

describe('writeImage archives', () => {
  it.each(['oci-archive', 'docker-archive'] as OutputFormat[])('leaves a %s that already holds these bytes in place, and rewrites one that differs', async (format) => {
    const out = join(dir, `same-${format}.tar`);
    await writeImage(image, { format, output: out });
    const first = statSync(out);
    const bytes = readFileSync(out);
    await new Promise((r) => setTimeout(r, 20));
    await writeImage(image, { format, output: out });
    const second = statSync(out);
    expect(second.ino).toBe(first.ino);
    expect(second.mtimeMs).toBeGreaterThan(first.mtimeMs);
    // One byte changed inside a layer blob: the file is replaced by a whole new one.
    const damaged = Buffer.from(bytes);
    damaged[damaged.length - 2048 - 10] ^= 0xff;
    damaged[Math.floor(damaged.length / 2)] ^= 0xff;
    writeFileSync(out, damaged);
    await writeImage(image, { format, output: out });
    expect(statSync(out).ino).not.toBe(first.ino);
    expect(readFileSync(out).equals(bytes)).toBe(true);
  });

  it.each(['oci-archive', 'docker-archive'] as OutputFormat[])('writes %s by position exactly as the streaming writer does, whatever the pieces', async (format) => {
    // Each layer cut into in-memory bytes and ranges of its file, as a layer composed from cached parts is.
    const cut = {
      ...image,
      layers: image.layers.map((layer) => {
        const piece = layer.pieces![0]!;
        if ('bytes' in piece) throw new Error('expected a file piece');
        const bytes = readFileSync(piece.file);
        const a = Math.min(100, bytes.length);
        const b = Math.max(a, bytes.length - 7);
        return {
          ...layer,
          pieces: [{ bytes: bytes.subarray(0, a) }, { file: piece.file, start: a, length: b - a }, { bytes: bytes.subarray(b) }],
        };
      }),
    };
    const streamed = { ...image, layers: image.layers.map((layer) => ({ ...layer, pieces: undefined })) };
    const byPosition = join(dir, `position-${format}.tar`);
    const byStream = join(dir, `stream-${format}.tar`);
    const fromSources = join(dir, `sources-${format}.tar`);
    await writeImage(cut, { format, output: byPosition });
    // The streaming writer (standard output), and blobs streamed from their sources into place.
    const stdout = createWriteStream(byStream);
    await writeImage(image, { format, output: '-', stdout });
    await new Promise((done) => stdout.end(done));
    await writeImage(streamed, { format, output: fromSources });
    expect(sha256(fromSources)).toBe(sha256(byStream));
    expect(sha256(byPosition)).toBe(sha256(byStream));
    expect(statSync(byPosition).size).toBe(statSync(byStream).size);
  });

  it.each(['oci-archive', 'docker-archive'] as OutputFormat[])('writes %s byte-identically every time, with fixed tar headers', async (format) => {
    const a = join(dir, `a-${format}.tar`);
    const b = join(dir, `b-${format}.tar`);
    await writeImage(image, { format, output: a });
    await writeImage(image, { format, output: b });
    expect(sha256(a)).toBe(sha256(b));
    const headers = await tarHeaders(a);
    const names = headers.map((h) => h.name.replace(/\/$/, ''));
    // Layers in the image's order (each written straight into its place as it is made), then the rest.
    const layerNames = names.filter((n) => image.layers.some((l) => n.includes(l.descriptor.digest.slice(7))));
    expect(layerNames).toEqual(image.layers.map((l) => (format === 'oci-archive' ? `blobs/sha256/${l.descriptor.digest.slice(7)}` : `${l.descriptor.digest.slice(7)}.tar.gz`)));
    expect(names.indexOf(layerNames.at(-1)!)).toBeLessThan(names.indexOf('manifest.json'));
    for (const h of headers) {
      expect(h.mtime?.getTime()).toBe(0);
      expect([h.uid, h.gid, h.uname, h.gname]).toEqual([0, 0, '', '']);
      expect(h.mode).toBe(h.type === 'directory' ? 0o755 : 0o644);
    }
    if (format === 'oci-archive') {
      expect(names).toEqual(expect.arrayContaining(['oci-layout', 'index.json', 'manifest.json', 'blobs/sha256']));
      expect(names.filter((n) => n.startsWith('blobs/sha256/'))).toHaveLength(2 + image.layers.length);
    } else {
      expect(names).toHaveLength(2 + image.layers.length);
      expect(names).toContain('manifest.json');
    }
  });

  it('records the tags in index.json and manifest.json', async () => {
    const file = join(dir, 'tags.tar');
    await writeImage(image, { format: 'oci-archive', output: file });
    const layout = join(dir, 'tags-layout');
    await writeImage(image, { format: 'oci-layout', output: layout });
    const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8'));
    expect(index.manifests.map((m: { annotations: Record<string, string> }) => m.annotations)).toEqual([
      { 'io.containerd.image.name': 'docker.io/nix2oci-test/write:1', 'org.opencontainers.image.ref.name': 'nix2oci-test/write:1' },
      { 'io.containerd.image.name': 'docker.io/nix2oci-test/write:latest', 'org.opencontainers.image.ref.name': 'nix2oci-test/write:latest' },
    ]);
    expect(index.manifests[0].platform).toEqual({ architecture: 'amd64', os: 'linux' });
    const dockerManifest = JSON.parse(readFileSync(join(layout, 'manifest.json'), 'utf8'));
    expect(dockerManifest[0].RepoTags).toEqual(['nix2oci-test/write:1', 'nix2oci-test/write:latest']);
    expect(readFileSync(join(layout, dockerManifest[0].Config)).equals(image.configBytes)).toBe(true);
  });

  it('streams to standard output with -, the same bytes as the file', async () => {
    const file = join(dir, 'stdout-ref.tar');
    await writeImage(image, { format: 'oci-archive', output: file });
    const sink = new PassThrough({ highWaterMark: 1024 });
    const chunks: Buffer[] = [];
    sink.on('data', (c: Buffer) => chunks.push(c));
    await writeImage(image, { format: 'oci-archive', output: '-', stdout: sink });
    expect(Buffer.concat(chunks).equals(readFileSync(file))).toBe(true);
  });

  it('reports a closed standard output in one line', async () => {
    let written = 0;
    const closed = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        written += chunk.length;
        if (written > 4096) callback(Object.assign(new Error('write EPIPE'), { code: 'EPIPE' }));
        else callback();
      },
    });
    await expect(writeImage(image, { format: 'docker-archive', output: '-', stdout: closed })).rejects.toThrow(
      new UserError('standard output was closed before the archive was written'),
    );
  });

  it('replaces an existing archive atomically and refuses a directory in its place', async () => {
    const file = join(dir, 'replace.tar');
    writeFileSync(file, 'old');
    await writeImage(image, { format: 'docker-archive', output: file });
    expect(statSync(file).size).toBeGreaterThan(1000);
    const directory = join(dir, 'a-directory');
    mkdirSync(directory);
    await expect(writeImage(image, { format: 'oci-archive', output: directory })).rejects.toThrow(UserError);
    await expect(writeImage(image, { format: 'oci-archive', output: join(dir, 'missing', 'x.tar') })).rejects.toThrow(
      /directory .*missing does not exist/,
    );
  });
});

describe('writeImage oci-layout', () => {
  it('writes the same files as the oci-archive holds', async () => {
    const layout = join(dir, 'same-layout');
    await writeImage(image, { format: 'oci-layout', output: layout });
    const archive = join(dir, 'same.tar');
    await writeImage(image, { format: 'oci-archive', output: archive });
    const fromArchive = (await tarHeaders(archive)).filter((h) => h.type === 'file').map((h) => h.name).sort();
    const fromLayout = [
      ...readdirSync(layout).filter((n) => n !== 'blobs'),
      ...readdirSync(join(layout, 'blobs/sha256')).map((n) => `blobs/sha256/${n}`),
    ].sort();
    expect(fromLayout).toEqual(fromArchive);
    expect(statSync(layout).mode & 0o777).toBe(0o755);
    for (const layer of image.layers) {
      const hex = layer.descriptor.digest.slice(7);
      expect(`sha256:${sha256(join(layout, 'blobs/sha256', hex))}`).toBe(layer.descriptor.digest);
    }
  });

  it('replaces an earlier layout, but never a directory that is not one', async () => {
    const layout = join(dir, 'replaced-layout');
    await writeImage(image, { format: 'oci-layout', output: layout });
    writeFileSync(join(layout, 'stale'), 'x');
    await writeImage(image, { format: 'oci-layout', output: layout });
    expect(readdirSync(layout)).not.toContain('stale');
    expect(readdirSync(dir).filter((n) => n.startsWith('.replaced-layout'))).toEqual([]);

    const precious = join(dir, 'precious');
    mkdirSync(precious);
    writeFileSync(join(precious, 'thesis.txt'), 'do not lose');
    await expect(writeImage(image, { format: 'oci-layout', output: precious })).rejects.toThrow(/not an OCI layout/);
    expect(readFileSync(join(precious, 'thesis.txt'), 'utf8')).toBe('do not lose');
    await expect(writeImage(image, { format: 'oci-layout', output: '-' })).rejects.toThrow(UserError);
  });
});

describe('an archive of uncompressed layers whose sizes are known before they are made', () => {
  const format = { compression: 'none' as const, gzipLevel: 6, mtime: 1 };
  /** Three layers: the first of unknown size (as a store path's), then two whose tar sizes are declared. */
  const files = [
    [{ name: 'nix/store/a', bytes: Buffer.alloc(3000, 1) }],
    [{ name: 'opt/python/one', bytes: Buffer.alloc(70_000, 2) }, { name: 'opt/python/two', bytes: Buffer.alloc(10, 3) }],
    [{ name: `opt/python/${'long/'.repeat(30)}three`, bytes: Buffer.alloc(5000, 4) }],
  ];
  const source = (i: number, delay = 0): LayerSource => async (sink) => {
    for (const f of files[i]!) {
      if (delay) await new Promise((resolve) => setTimeout(resolve, delay));
      await sink.add({ type: 'file', name: f.name, mode: 0o644, size: f.bytes.length, body: f.bytes });
    }
  };
  const sizeOf = (i: number) => tarSize(files[i]!.map((f) => ({ type: 'file' as const, name: f.name, mode: 0o644, size: f.bytes.length })), 1);

  async function archive(path: string, concurrent: boolean, sizes: (number | undefined)[] = [undefined, sizeOf(1), sizeOf(2)]): Promise<void> {
    const out = await openOutput({ format: 'oci-archive', output: path, workDir: tempDir() });
    const meta = (i: number) => ({ contents: [`layer ${i}`], compression: 'none' as const });
    let layers: Layer[];
    try {
      if (concurrent) {
        out.expectSizes?.(sizes);
        // The last layer starts first and the middle one is slow: they finish out of order.
        const written: Promise<Layer>[] = [];
        written[2] = out.writeLayer(2, meta(2), (to) => writeLayerAt(source(2), format, to));
        written[1] = out.writeLayer(1, meta(1), (to) => writeLayerAt(source(1, 30), format, to));
        written[0] = out.writeLayer(0, meta(0), (to) => writeLayerAt(source(0, 10), format, to));
        layers = await Promise.all(written);
      } else {
        layers = [];
        for (let i = 0; i < 3; i++) layers.push(await out.writeLayer(i, meta(i), (to) => writeLayerAt(source(i), format, to)));
      }
      const { image } = assembleImage({ layers, config: demoConfig(), created: new Date(1_700_000_000_000), tags: ['nix2oci-test/placed:1'] });
      await out.finish(image);
    } catch (err) {
      await out.abandon();
      throw err;
    }
  }

  it('places them at once and writes them side by side, to the very bytes of writing them one by one', async () => {
    const one = join(dir, 'one-by-one.tar');
    const side = join(dir, 'side-by-side.tar');
    await archive(one, false);
    await archive(side, true);
    expect(sha256(side)).toBe(sha256(one));
    const names = (await tarHeaders(side)).map((h) => h.name);
    expect(names.filter((n) => /^blobs\/sha256\/[0-9a-f]{64}$/.test(n))).toHaveLength(5);
  });

  it('fails and leaves no archive when a layer does not measure what was set aside for it', async () => {
    const path = join(dir, 'wrong-size.tar');
    await expect(archive(path, true, [undefined, sizeOf(1) + 512, sizeOf(2)])).rejects.toThrow(/layer 2 is \d+ bytes, \d+ were set aside for it/);
    expect(readdirSync(dir).filter((n) => n.startsWith('wrong-size'))).toEqual([]);
  });
});
