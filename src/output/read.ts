import { createHash } from 'node:crypto';
import { constants, createReadStream } from 'node:fs';
import { lstat, open, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describeJsonError } from '../util/json-error.js';
import { fileKind } from '../util/input-file.js';
import { UserError } from '../util/errors.js';
import { CONTENTS_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION } from '../model/assemble.js';
import { compressionOf, MediaTypes, type Descriptor, type Image, type Layer } from '../model/image.js';
import { parseArtifactManifest, type Artifact } from '../model/artifact.js';
import { blobPath, CONTAINERD_NAME_ANNOTATION, REF_NAME_ANNOTATION, type DockerArchiveManifestEntry } from './layout.js';
import { configMediaType, formatOfManifest, serializeManifest, sha256Digest } from '../model/manifest.js';
import { sameImageName } from '../model/reference.js';
import { indexTar, type TarMember } from '../tar/reader.js';

export interface ReadImageOptions {
  /** Which image to take when the archive holds several: a name as recorded (`nix2oci/demo:latest`). */
  tag?: string;
}

/** Registries refuse manifests over 4 MiB; configs and indexes get some more room. */
const MAX_MANIFEST = 4 << 20;
const MAX_METADATA = 16 << 20;
/** An SBOM of a large closure is some MB; a document is read whole. */
const MAX_DOCUMENT = 256 << 20;

/**
 * Reads an image from an oci-archive, docker-archive or OCI layout directory (detected from what it
 * holds). Only metadata is read; layer blobs are opened on demand, as byte ranges of the archive.
 */
export async function readImage(path: string, options: ReadImageOptions = {}): Promise<Image> {
  const info = await stat(path).catch((err: NodeJS.ErrnoException) => {
    throw new UserError(`cannot read image ${path}: ${err.code === 'ENOENT' ? 'no such file or directory' : (err.code ?? err.message)}`);
  });
  const store = info.isDirectory() ? await directoryStore(path) : await tarStore(path);
  if (store.has('index.json') && (store.has('oci-layout') || !store.has('manifest.json'))) return readOci(store, options);
  if (store.has('manifest.json')) return readDockerArchive(store, options);
  throw new UserError(
    `${path} is not an OCI archive, Docker archive or OCI layout: it has no index.json or manifest.json at its top level`,
  );
}

/** The files of an archive or layout directory, by relative name. */
interface Store {
  path: string;
  has(name: string): boolean;
  /** Size in bytes, or undefined when there is no such regular file. */
  size(name: string): number | undefined;
  open(name: string, start?: number): Readable;
  /** The first `length` bytes (fewer if the file is shorter). */
  head(name: string, length: number): Promise<Buffer>;
  /** Looks the names up so that `has` and `size` can answer for them (a directory is not indexed up front). */
  lookup(names: string[]): Promise<void>;
}

async function tarStore(file: string): Promise<Store> {
  const members = await indexTar(file);
  const regular = (name: string): TarMember | undefined => {
    const member = members.get(memberName(name));
    return member?.type === 'file' ? member : undefined;
  };
  return {
    path: file,
    has: (name) => regular(name) !== undefined,
    size: (name) => regular(name)?.size,
    open(name, start = 0) {
      const member = regular(name)!;
      if (start >= member.size) return Readable.from([]);
      return createReadStream(file, { start: member.offset + start, end: member.offset + member.size - 1 });
    },
    async head(name, length) {
      const member = regular(name)!;
      const buf = Buffer.alloc(Math.min(length, member.size));
      const handle = await open(file, 'r');
      try {
        await handle.read(buf, 0, buf.length, member.offset);
      } finally {
        await handle.close();
      }
      return buf;
    },
    lookup: async () => {},
  };
}

/**
 * A layout (or docker-archive) directory. Its files are opened without following a symbolic link
 * anywhere below `dir`: every directory on the way must be a real directory and the file a regular
 * file, or the layout is refused. A layout from elsewhere may hold links to host files (a blob that is
 * `/etc/shadow`), and push would upload, and inspect quote, whatever they point at.
 */
async function directoryStore(dir: string): Promise<Store> {
  const sizes = new Map<string, number | undefined>();
  const store: Store = {
    path: dir,
    has: (name) => sizes.get(name) !== undefined,
    size: (name) => sizes.get(name),
    open(name, start = 0) {
      // Opened again for each reader (a push reads a blob once per attempt), and checked again each time.
      async function* chunks(): AsyncGenerator<Buffer> {
        const { handle } = await openInside(dir, name);
        const stream = handle.createReadStream({ start, autoClose: true });
        try {
          for await (const chunk of stream) yield chunk as Buffer;
        } finally {
          stream.destroy();
        }
      }
      return Readable.from(chunks(), { objectMode: false });
    },
    async head(name, length) {
      const { handle } = await openInside(dir, name);
      try {
        const buf = Buffer.alloc(length);
        const { bytesRead } = await handle.read(buf, 0, length, 0);
        return buf.subarray(0, bytesRead);
      } finally {
        await handle.close();
      }
    },
    async lookup(names) {
      for (const name of names) {
        if (sizes.has(name)) continue;
        sizes.set(name, await sizeInside(dir, name));
      }
    },
  };
  await store.lookup(['index.json', 'oci-layout', 'manifest.json']);
  return store;
}

/** The components of a name inside a layout; a name that could leave it is refused. */
function insideParts(dir: string, name: string): string[] {
  const parts = name.split('/');
  if (parts.some((p) => p === '' || p === '.' || p === '..')) throw new UserError(`${dir}: ${name} is not a plain path inside the layout`);
  return parts;
}

/**
 * The size of the regular file `name` inside `dir`, or undefined when there is none. A symbolic link
 * (or a device, a pipe) there, or on the way to it, is an error naming it: it is never followed.
 */
async function sizeInside(dir: string, name: string): Promise<number | undefined> {
  const parts = insideParts(dir, name);
  let path = dir;
  for (const [i, part] of parts.entries()) {
    path = join(path, part);
    const st = await lstat(path).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return undefined;
      throw new UserError(`${dir}: cannot read ${parts.slice(0, i + 1).join('/')}: ${err.code ?? err.message}`);
    });
    if (!st) return undefined;
    const last = i === parts.length - 1;
    if (st.isSymbolicLink()) {
      throw new UserError(`${dir}: ${parts.slice(0, i + 1).join('/')} is a symbolic link; a layout's files are never read through links (it could point anywhere on this machine)`);
    }
    if (!last && !st.isDirectory()) return undefined;
    if (last) {
      if (st.isDirectory()) return undefined;
      if (!st.isFile()) throw new UserError(`${dir}: ${name} is ${fileKind(st)}, not a regular file`);
      return st.size;
    }
  }
  return undefined;
}

/**
 * Opens the regular file `name` inside `dir` without following symbolic links: the last component with
 * O_NOFOLLOW (and O_NONBLOCK, so a planted FIFO cannot hang the read), the directories on the way
 * checked before and after the open, so a link swapped in meanwhile is noticed.
 */
async function openInside(dir: string, name: string): Promise<{ handle: FileHandle; size: number }> {
  const parts = insideParts(dir, name);
  const chain = async () => {
    const ids: string[] = [];
    let path = dir;
    for (const part of parts.slice(0, -1)) {
      path = join(path, part);
      const st = await lstat(path).catch(() => undefined);
      if (!st?.isDirectory()) throw new UserError(`${dir}: ${name}: ${path.slice(dir.length + 1)} is not a directory of the layout (a symbolic link is never followed)`);
      ids.push(`${st.dev}:${st.ino}`);
    }
    return ids.join('/');
  };
  const before = await chain();
  let handle: FileHandle;
  try {
    handle = await open(join(dir, name), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') throw new UserError(`${dir}: ${name} is a symbolic link; a layout's files are never read through links (it could point anywhere on this machine)`);
    throw new UserError(`${dir}: cannot read ${name}: ${code === 'ENOENT' ? 'it is gone' : (code ?? (err as Error).message)}`);
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new UserError(`${dir}: ${name} is ${fileKind(st)}, not a regular file`);
    if ((await chain()) !== before) throw new UserError(`${dir}: ${name}: the layout's directories changed while it was being read`);
    return { handle, size: st.size };
  } catch (err) {
    await handle.close();
    throw err;
  }
}

async function readSmall(store: Store, name: string, limit: number, what: string): Promise<Buffer> {
  await store.lookup([name]);
  const size = store.size(name);
  if (size === undefined) throw new UserError(`${store.path}: ${what} ${name} is missing`);
  if (size > limit) throw new UserError(`${store.path}: ${what} ${name} is ${size} bytes, more than the ${limit} allowed`);
  const chunks: Buffer[] = [];
  for await (const chunk of store.open(name)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Parses a metadata file; an error says where it is not JSON, never what it holds. */
function parseJson<T>(bytes: Buffer, where: string): T {
  const text = bytes.toString('utf8');
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new UserError(`${where} is not valid JSON: ${describeJsonError(text, { quote: false })}`);
  }
}

/** manifest.json may name files `./<name>`; archives index them without the prefix. */
function memberName(name: string): string {
  return name.replace(/^(\.\/)+/, '');
}


function checkDescriptor(value: unknown, where: string): Descriptor {
  const d = value as Partial<Descriptor> | null;
  if (
    !d ||
    typeof d.mediaType !== 'string' ||
    typeof d.digest !== 'string' ||
    !/^sha256:[0-9a-f]{64}$/.test(d.digest) ||
    !Number.isSafeInteger(d.size) ||
    (d.size as number) < 0
  ) {
    const missing = [
      ...(typeof d?.mediaType !== 'string' ? ['a mediaType'] : []),
      ...(typeof d?.digest !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(d.digest) ? ['a sha256 digest'] : []),
      ...(!Number.isSafeInteger(d?.size) || (d!.size as number) < 0 ? ['a size'] : []),
    ];
    throw new UserError(`${where}: invalid descriptor: it has no ${missing.join(', ') || 'valid fields'}`);
  }
  return d as Descriptor;
}

interface IndexJson {
  schemaVersion?: number;
  manifests?: unknown[];
}

/** A manifest found through index.json, with the names recorded for it. */
interface Candidate {
  descriptor: Descriptor;
  names: string[];
}

async function readOci(store: Store, options: ReadImageOptions): Promise<Image> {
  const where = `${store.path}: index.json`;
  const index = parseJson<IndexJson>(await readSmall(store, 'index.json', MAX_METADATA, 'index'), where);
  if (index.schemaVersion !== 2 || !Array.isArray(index.manifests)) throw new UserError(`${where} is not an OCI image index`);

  const candidates = new Map<string, Candidate>();
  const artifacts: Descriptor[] = [];
  for (const [i, raw] of index.manifests.entries()) {
    const descriptor = checkDescriptor(raw, `${where} manifests[${i}]`);
    // An artifact (an SBOM, a provenance) is about an image, not one: kept for the image it names.
    if (typeof (raw as { artifactType?: unknown }).artifactType === 'string') {
      artifacts.push(descriptor);
      continue;
    }
    const found =
      descriptor.mediaType === MediaTypes.ociIndex || descriptor.mediaType === 'application/vnd.docker.distribution.manifest.list.v2+json'
        ? await manifestOfNestedIndex(store, descriptor)
        : descriptor;
    const candidate = candidates.get(found.digest) ?? { descriptor: found, names: [] };
    const name = recordedName(descriptor.annotations);
    if (name !== undefined && !candidate.names.includes(name)) candidate.names.push(name);
    candidates.set(found.digest, candidate);
  }
  if (candidates.size === 0) throw new UserError(`${where} lists no image`);

  let chosen: Candidate;
  if (options.tag !== undefined) {
    const match = [...candidates.values()].find((c) => c.names.some((n) => sameImageName(n, options.tag!)));
    if (!match) throw new UserError(`${store.path} holds no image named ${options.tag} (it has: ${listNames(candidates)})`);
    chosen = match;
  } else if (candidates.size > 1) {
    throw new UserError(`${store.path} holds ${candidates.size} images; choose one by name (${listNames(candidates)})`);
  } else {
    chosen = [...candidates.values()][0]!;
  }

  let tags = chosen.names;
  if (tags.length === 0 && store.has('manifest.json')) {
    // An index without names (as some tools write) may sit beside a docker manifest.json that has them.
    tags = await dockerRepoTagsFor(store, chosen.descriptor);
  }
  const image = await readManifest(store, chosen.descriptor, tags);
  const attachments = await readAttachments(store, artifacts, chosen.descriptor.digest);
  return attachments.length > 0 ? { ...image, attachments } : image;
}

/** The artifacts of index.json whose subject is the image `subject`, with their blobs (documents are small). */
async function readAttachments(store: Store, descriptors: Descriptor[], subject: string): Promise<Artifact[]> {
  const attachments: Artifact[] = [];
  for (const descriptor of descriptors) {
    const bytes = await readBlobSmall(store, descriptor, MAX_MANIFEST, 'artifact manifest');
    const parsed = parseArtifactManifest(bytes, `${store.path}: ${blobPath(descriptor.digest)}`);
    if (parsed.subject.digest !== subject) continue;
    const blobs = [];
    for (const d of [parsed.config, ...parsed.layers]) blobs.push({ descriptor: d, bytes: await readBlobSmall(store, d, MAX_DOCUMENT, 'artifact blob') });
    attachments.push({ artifactType: parsed.artifactType, manifestBytes: bytes, descriptor: { ...descriptor, artifactType: parsed.artifactType }, blobs });
  }
  return attachments;
}

/** The manifest for this machine's platform (or the only one) from a nested index, as Docker 25's save writes. */
async function manifestOfNestedIndex(store: Store, descriptor: Descriptor): Promise<Descriptor> {
  const where = `${store.path}: ${blobPath(descriptor.digest)}`;
  const bytes = await readBlobSmall(store, descriptor, MAX_METADATA, 'image index');
  const nested = parseJson<IndexJson>(bytes, where);
  const manifests = (nested.manifests ?? []).map((m, i) => checkDescriptor(m, `${where} manifests[${i}]`));
  await store.lookup(manifests.map((m) => blobPath(m.digest)));
  const present = manifests.filter((m) => store.has(blobPath(m.digest)));
  if (present.length === 1) return present[0]!;
  const arch = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' }[
    process.arch as string
  ];
  const native = present.filter((m) => {
    const platform = (m as Descriptor & { platform?: { architecture?: string; os?: string } }).platform;
    return platform?.os === 'linux' && platform.architecture === arch;
  });
  if (native.length === 1) return native[0]!;
  throw new UserError(`${where} is a multi-platform index with ${present.length} images present; nix2oci reads single-platform images`);
}

function recordedName(annotations: Record<string, string> | undefined): string | undefined {
  const refName = annotations?.[REF_NAME_ANNOTATION];
  const containerdName = annotations?.[CONTAINERD_NAME_ANNOTATION];
  // ref.name holds a whole name when podman, skopeo or nix2oci wrote it, only a tag when containerd did.
  if (refName !== undefined && (refName.includes(':') || refName.includes('/'))) return refName;
  return containerdName ?? refName;
}

function listNames(candidates: Map<string, Candidate>): string {
  return [...candidates.values()].map((c) => (c.names.length > 0 ? c.names.join(', ') : `unnamed ${c.descriptor.digest}`)).join('; ');
}

async function dockerRepoTagsFor(store: Store, manifest: Descriptor): Promise<string[]> {
  try {
    const entries = parseJson<DockerArchiveManifestEntry[]>(await readSmall(store, 'manifest.json', MAX_METADATA, 'manifest'), '');
    const bytes = await readBlobSmall(store, manifest, MAX_MANIFEST, 'manifest');
    const config = (JSON.parse(bytes.toString('utf8')) as { config?: { digest?: string } }).config?.digest;
    const entry = entries.find((e) => config !== undefined && e.Config === blobPath(config));
    return entry?.RepoTags ?? [];
  } catch {
    return [];
  }
}

/** A small blob (manifest, config, index), checked against its digest and size. */
async function readBlobSmall(store: Store, descriptor: Descriptor, limit: number, what: string): Promise<Buffer> {
  const name = blobPath(descriptor.digest);
  const bytes = await readSmall(store, name, limit, what);
  if (bytes.length !== descriptor.size || sha256Digest(bytes) !== descriptor.digest) {
    throw new UserError(`${store.path}: ${what} ${name} does not match its descriptor (size ${bytes.length}, expected ${descriptor.size}, or a different digest)`);
  }
  return bytes;
}

interface ManifestJson {
  schemaVersion?: number;
  mediaType?: string;
  config?: unknown;
  layers?: unknown[];
}

interface ConfigJson {
  rootfs?: { type?: string; diff_ids?: unknown };
}

async function readManifest(store: Store, descriptor: Descriptor, tags: string[]): Promise<Image> {
  const name = blobPath(descriptor.digest);
  const where = `${store.path}: manifest ${name}`;
  const manifestBytes = await readBlobSmall(store, descriptor, MAX_MANIFEST, 'manifest');
  const manifest = parseJson<ManifestJson>(manifestBytes, where);
  const mediaType = manifest.mediaType ?? descriptor.mediaType;
  if (manifest.schemaVersion !== 2 || formatOfManifest(mediaType) === undefined) {
    throw new UserError(`${where} has media type ${mediaType}; nix2oci reads OCI and Docker schema 2 image manifests`);
  }
  const configDescriptor = checkDescriptor(manifest.config, `${where} config`);
  const configBytes = await readBlobSmall(store, configDescriptor, MAX_METADATA, 'config');
  const layerDescriptors = (manifest.layers ?? []).map((l, i) => checkDescriptor(l, `${where} layers[${i}]`));
  const diffIds = diffIdsOf(configBytes, `${store.path}: config ${blobPath(configDescriptor.digest)}`, layerDescriptors.length);
  await store.lookup(layerDescriptors.map((d) => blobPath(d.digest)));

  const layers = layerDescriptors.map((descriptor, i): Layer => {
    const blob = blobPath(descriptor.digest);
    const size = store.size(blob);
    if (size === undefined) throw new UserError(`${store.path}: layer ${i + 1} blob ${blob} is missing`);
    if (size !== descriptor.size) throw new UserError(`${store.path}: layer ${i + 1} blob ${blob} is ${size} bytes, its descriptor says ${descriptor.size}`);
    const contents = descriptor.annotations?.[CONTENTS_ANNOTATION]?.split('\n').filter(Boolean);
    const annotatedSize = Number(descriptor.annotations?.[UNCOMPRESSED_SIZE_ANNOTATION]);
    const uncompressedSize = isUncompressed(descriptor.mediaType)
      ? descriptor.size
      : Number.isSafeInteger(annotatedSize) && annotatedSize >= 0
        ? annotatedSize
        : undefined;
    return {
      descriptor,
      diffId: diffIds[i]!,
      compression: compressionOf(descriptor.mediaType),
      ...(uncompressedSize !== undefined && { uncompressedSize }),
      contents: contents ?? [],
      open: (start) => store.open(blob, start),
    };
  });
  return { manifestBytes, manifestMediaType: mediaType, configBytes, configDescriptor, layers, tags };
}

function isUncompressed(mediaType: string): boolean {
  return mediaType === MediaTypes.ociLayer || mediaType === MediaTypes.dockerLayer;
}

function diffIdsOf(configBytes: Buffer, where: string, layerCount: number): string[] {
  const config = parseJson<ConfigJson>(configBytes, where);
  const diffIds = config.rootfs?.diff_ids;
  if (!Array.isArray(diffIds) || diffIds.some((d) => typeof d !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(d))) {
    throw new UserError(`${where} has no valid rootfs.diff_ids`);
  }
  if (diffIds.length !== layerCount) {
    throw new UserError(`${where} lists ${diffIds.length} layer diff IDs but the image has ${layerCount} layers`);
  }
  return diffIds as string[];
}

async function readDockerArchive(store: Store, options: ReadImageOptions): Promise<Image> {
  const where = `${store.path}: manifest.json`;
  const entries = parseJson<DockerArchiveManifestEntry[]>(await readSmall(store, 'manifest.json', MAX_METADATA, 'manifest'), where);
  if (!Array.isArray(entries) || entries.length === 0) throw new UserError(`${where} lists no image`);
  let entry: DockerArchiveManifestEntry;
  if (options.tag !== undefined) {
    const match = entries.find((e) => e.RepoTags?.some((n) => sameImageName(n, options.tag!)));
    if (!match) throw new UserError(`${store.path} holds no image named ${options.tag}`);
    entry = match;
  } else if (entries.length > 1) {
    const names = entries.map((e, i) => e.RepoTags?.join(', ') || `image ${i + 1}`).join('; ');
    throw new UserError(`${store.path} holds ${entries.length} images; choose one by name (${names})`);
  } else {
    entry = entries[0]!;
  }
  if (typeof entry.Config !== 'string' || !Array.isArray(entry.Layers) || entry.Layers.some((l) => typeof l !== 'string')) {
    throw new UserError(`${where}: an entry needs Config and Layers`);
  }
  for (const name of [entry.Config, ...entry.Layers]) {
    // Names come from the archive: never let one reach outside it (a layout directory is read by path).
    if (name.startsWith('/') || name.split('/').includes('..')) throw new UserError(`${where} names a file outside the archive: ${name}`);
  }

  const configBytes = await readSmall(store, entry.Config, MAX_METADATA, 'config');
  const configDescriptor: Descriptor = {
    mediaType: configMediaType('docker'),
    digest: sha256Digest(configBytes),
    size: configBytes.length,
  };
  const diffIds = diffIdsOf(configBytes, `${store.path}: config ${entry.Config}`, entry.Layers.length);
  await store.lookup(entry.Layers);

  const layers: Layer[] = [];
  for (const [i, name] of entry.Layers.entries()) {
    const size = store.size(name);
    if (size === undefined) throw new UserError(`${store.path}: layer ${i + 1} file ${name} is missing`);
    const magic = await store.head(name, 4);
    const gzip = magic[0] === 0x1f && magic[1] === 0x8b;
    if (magic.length === 4 && magic.readUInt32BE(0) === 0x28b52ffd) {
      throw new UserError(`${store.path}: layer ${name} is zstd-compressed, which docker archives do not support`);
    }
    // An uncompressed layer's digest is its diff ID; a compressed one's is in its content-addressed name, or computed.
    const digest = gzip ? (contentAddressedDigest(name) ?? (await digestOf(store.open(name)))) : diffIds[i]!;
    const descriptor: Descriptor = {
      mediaType: gzip ? MediaTypes.dockerLayerGzip : MediaTypes.dockerLayer,
      digest,
      size,
    };
    layers.push({
      descriptor,
      diffId: diffIds[i]!,
      compression: gzip ? 'gzip' : 'none',
      contents: [],
      ...(!gzip && { uncompressedSize: size }),
      open: (start) => store.open(name, start),
    });
  }
  const manifestBytes = serializeManifest(
    'docker',
    configDescriptor,
    layers.map((l) => l.descriptor),
  );
  return {
    manifestBytes,
    manifestMediaType: MediaTypes.dockerManifest,
    configBytes,
    configDescriptor,
    layers,
    tags: entry.RepoTags ?? [],
  };
}

/** `blobs/sha256/<hex>` (Docker 25) or `<hex>.tar.gz` (nix2oci) name their content's digest. */
function contentAddressedDigest(name: string): string | undefined {
  const match = /^(?:blobs\/sha256\/([0-9a-f]{64})|([0-9a-f]{64})\.tar(?:\.gz)?)$/.exec(name);
  const hex = match?.[1] ?? match?.[2];
  return hex !== undefined ? `sha256:${hex}` : undefined;
}

async function digestOf(stream: Readable): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of stream) hash.update(chunk as Buffer);
  return `sha256:${hash.digest('hex')}`;
}

