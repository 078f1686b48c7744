import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, mkdirSync, readFileSync, statSync, writeFileSync, copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { PassThrough, Transform } from 'node:stream';
import { createGzip } from 'node:zlib';
import tar, { type Header } from 'tar-stream';
import { MediaTypes, type Descriptor, type Image, type Layer } from '../../../src/model/image.js';

/**
 * Small real images for the push tests, written as blob files (as build-image would) and opened
 * as streams: a busybox layer that podman can run, and layers of random bytes for chunked uploads.
 */
export type TestFile =
  | { type: 'file'; name: string; mode?: number; content: Buffer }
  | { type: 'copy'; name: string; mode?: number; from: string }
  | { type: 'symlink'; name: string; target: string };

export interface TestLayer {
  files: TestFile[];
  gzip?: boolean;
  annotations?: Record<string, string>;
}

export interface TestImageSpec {
  layers: TestLayer[];
  format?: 'oci' | 'docker';
  annotations?: Record<string, string>;
  cmd?: string[];
}

/** An image whose layer blobs are files; `blobFiles` maps each layer digest to its file. */
export interface TestImage extends Image {
  blobFiles: Map<string, string>;
}

export async function writeTestImage(dir: string, spec: TestImageSpec): Promise<TestImage> {
  mkdirSync(dir, { recursive: true });
  const docker = spec.format === 'docker';
  const layers: Layer[] = [];
  const blobFiles = new Map<string, string>();
  for (const [index, layerSpec] of spec.layers.entries()) {
    const gzip = layerSpec.gzip ?? true;
    const file = join(dir, `layer-${index}${gzip ? '.tar.gz' : '.tar'}`);
    const { digest, size, diffId } = await writeLayer(file, layerSpec.files, gzip);
    const mediaType = docker
      ? gzip
        ? MediaTypes.dockerLayerGzip
        : MediaTypes.dockerLayer
      : gzip
        ? MediaTypes.ociLayerGzip
        : MediaTypes.ociLayer;
    const descriptor: Descriptor = { mediaType, digest, size, ...(layerSpec.annotations && { annotations: layerSpec.annotations }) };
    blobFiles.set(digest, file);
    layers.push({ descriptor, diffId, compression: gzip ? 'gzip' : 'none', open: (start = 0) => createReadStream(file, { start }), contents: [`layer-${index}`] });
  }
  return assembleImage(layers, blobFiles, spec);
}

/** Config and manifest for layers that exist already (e.g. layers of other test images, to test mounts). */
export function assembleImage(layers: Layer[], blobFiles: Map<string, string>, spec: Omit<TestImageSpec, 'layers'> = {}): TestImage {
  const docker = spec.format === 'docker';
  const config = {
    architecture: 'amd64',
    os: 'linux',
    config: { Cmd: spec.cmd ?? ['/bin/sh', '-c', 'echo hello from nix2oci'], Env: ['PATH=/bin'] },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
  };
  const configBytes = Buffer.from(JSON.stringify(config));
  const configDescriptor: Descriptor = {
    mediaType: docker ? MediaTypes.dockerConfig : MediaTypes.ociConfig,
    digest: sha256(configBytes),
    size: configBytes.length,
  };
  const manifest = {
    schemaVersion: 2,
    mediaType: docker ? MediaTypes.dockerManifest : MediaTypes.ociManifest,
    config: configDescriptor,
    layers: layers.map((l) => l.descriptor),
    ...(spec.annotations && { annotations: spec.annotations }),
  };
  return {
    manifestBytes: Buffer.from(JSON.stringify(manifest)),
    manifestMediaType: manifest.mediaType,
    configBytes,
    configDescriptor,
    layers,
    tags: [],
    blobFiles,
  };
}

/** A layer with the static busybox as /bin/busybox and /bin/sh. */
export function busyboxLayer(): TestLayer {
  return {
    files: [
      { type: 'copy', name: 'bin/busybox', mode: 0o755, from: '/bin/busybox' },
      { type: 'symlink', name: 'bin/sh', target: 'busybox' },
      { type: 'symlink', name: 'bin/echo', target: 'busybox' },
      { type: 'symlink', name: 'bin/cat', target: 'busybox' },
    ],
  };
}

/** An uncompressed layer holding one file of `size` random bytes (incompressible, so sizes are exact). */
export function randomLayer(name: string, size: number): TestLayer {
  return { gzip: false, files: [{ type: 'file', name: `data/${name}`, content: randomBytes(size) }] };
}

/** Writes the image as an OCI layout directory, for skopeo and for `push SOURCE`. */
export function writeOciLayout(dir: string, image: TestImage, tag = 'latest'): void {
  const blobs = join(dir, 'blobs', 'sha256');
  mkdirSync(blobs, { recursive: true });
  writeFileSync(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const put = (digest: string, write: (path: string) => void) => write(join(blobs, digest.slice('sha256:'.length)));
  for (const layer of image.layers) {
    put(layer.descriptor.digest, (path) => copyFileSync(image.blobFiles.get(layer.descriptor.digest)!, path));
  }
  put(image.configDescriptor.digest, (path) => writeFileSync(path, image.configBytes));
  const manifestDigest = sha256(image.manifestBytes);
  put(manifestDigest, (path) => writeFileSync(path, image.manifestBytes));
  const index = {
    schemaVersion: 2,
    mediaType: MediaTypes.ociIndex,
    manifests: [
      {
        mediaType: image.manifestMediaType,
        digest: manifestDigest,
        size: image.manifestBytes.length,
        annotations: { 'org.opencontainers.image.ref.name': tag },
      },
    ],
  };
  writeFileSync(join(dir, 'index.json'), JSON.stringify(index));
}

export function sha256(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

async function writeLayer(file: string, files: TestFile[], gzip: boolean): Promise<{ digest: string; size: number; diffId: string }> {
  const pack = tar.pack();
  const tarHash = createHash('sha256');
  const blobHash = createHash('sha256');
  const hashTar = new Transform({
    transform(chunk: Buffer, _enc, done) {
      tarHash.update(chunk);
      done(null, chunk);
    },
  });
  const hashBlob = new Transform({
    transform(chunk: Buffer, _enc, done) {
      blobHash.update(chunk);
      done(null, chunk);
    },
  });
  const written = pipeline(pack, hashTar, gzip ? createGzip({ level: 6 }) : new PassThrough(), hashBlob, createWriteStream(file));
  const mtime = new Date(1);
  const dirs = new Set<string>();
  for (const f of files) {
    const parts = f.name.split('/').slice(0, -1);
    for (let i = 1; i <= parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      if (!dirs.has(dir)) {
        dirs.add(dir);
        await entry(pack, { name: dir, type: 'directory', mode: 0o755, mtime });
      }
    }
    if (f.type === 'symlink') await entry(pack, { name: f.name, type: 'symlink', linkname: f.target, mtime });
    else {
      const content = f.type === 'file' ? f.content : readFileSync(f.from);
      await entry(pack, { name: f.name, type: 'file', mode: f.mode ?? 0o644, size: content.length, mtime }, content);
    }
  }
  pack.finalize();
  await written;
  return { digest: `sha256:${blobHash.digest('hex')}`, size: statSync(file).size, diffId: `sha256:${tarHash.digest('hex')}` };
}

function entry(pack: tar.Pack, header: Partial<Header> & Pick<Header, 'name'>, content?: Buffer): Promise<void> {
  return new Promise((resolve, reject) => pack.entry(header, content ?? '', (err) => (err ? reject(err) : resolve())));
}
