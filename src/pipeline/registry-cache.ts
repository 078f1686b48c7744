import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import pLimit from 'p-limit';
import { compressionOf, type Layer } from '../model/image.js';
import type { Compression } from '../layer/format.js';
import type { LayerOutput, Written } from '../layer/writer.js';
import { tarHasher } from '../layer/diff-id.js';
import { formatReference, type ImageReference } from '../model/reference.js';
import { ArtifactProblem, fetchArtifact, pushArtifact } from '../registry/artifact.js';
import { artifactOf } from '../model/artifact.js';
import { headBlobSize, mountBlob } from '../registry/blob-upload.js';
import type { RegistryClient } from '../registry/client.js';
import { openRegistry, type RegistryAccess, type RegistrySession } from '../registry/connect.js';
import {
  CACHE_INDEX_ARTIFACT_TYPE,
  CACHE_INDEX_MEDIA_TYPE,
  holdsEntries,
  MAX_INDEX_BYTES,
  mergeCacheIndex,
  parseCacheIndex,
  serializeCacheIndex,
  type CacheIndex,
  type CacheIndexEntry,
} from '../registry/cache-index.js';
import { DEFAULT_RETRY_POLICY, sleep, type RetryPolicy } from '../registry/retry.js';
import { DEFAULT_STALL_TIMEOUT_MS } from '../registry/push.js';
import { UserError } from '../util/errors.js';
import { formatBytes } from '../util/units.js';
import { isElfFactsList } from './wheels.js';

/**
 * The registry as a layer cache shared by CI runners (`--cache-from`, `--cache-to`): an index from
 * layer-cache keys to layers (registry/cache-index.ts), read before layers are made, and merged with
 * this build's layers and pushed after the image.
 *
 * The index is never trusted: a layer is taken from it only when the repository the image goes to
 * holds a blob of that digest and size (HEAD), or one can be mounted there. Only then do the image's
 * digest and diffID for that layer come from the index; `verify` also downloads the blob and checks
 * its diffID. Such a layer has no bytes here: a push finds it present, and an output fetches it.
 */
export interface RegistryCacheOptions extends RegistryAccess {
  /** Where the index is read (`HOST/REPO:TAG`); null: not read. */
  from: ImageReference | null;
  /** The repository whose blobs count: the push target; null: the index's own repository. */
  target: ImageReference | null;
  /** More repositories on the registry to mount blobs from (`--mount-from`). */
  mountFrom: string[];
  /** Download each reused blob once and check its digest and diffID (`--verify-registry-cache`). */
  verify: boolean;
  retries?: number;
}

/** HEAD requests in flight at once. */
const CHECKS = 16;

export class RegistryLayers {
  readonly #limit = pLimit(CHECKS);
  /** Entries checked so far, by digest: one HEAD per blob however many keys name it. */
  readonly #present = new Map<string, Promise<boolean>>();
  /** Downloads checked by --verify-registry-cache, by digest. */
  readonly #verified = new Map<string, Promise<boolean>>();
  #checkFailed = false;
  /** Keys whose blob the repository lacks (or holds with another size). */
  readonly #missing = new Set<string>();

  private constructor(
    readonly session: RegistrySession,
    readonly index: CacheIndex,
    /** Where the blobs are looked for. */
    readonly repository: string,
    readonly mountSources: string[],
    readonly verify: boolean,
    readonly warn: (line: string) => void,
  ) {}

  /**
   * Connects and reads the index. A registry cache that cannot be read (no index yet, a refusal, a
   * malformed index) leaves the build to make its layers: said once, never a failure. Only a failure to
   * reach the registry the image goes to (`target`) fails, as the push would.
   */
  static async open(options: RegistryCacheOptions, log: (line: string) => void, warn: (line: string) => void): Promise<RegistryLayers | null> {
    const from = options.from;
    if (!from) return null;
    const target = options.target ?? from;
    if (target.registry !== from.registry) {
      throw new UserError(`--cache-from ${formatReference(from, from.tag)} must be on the registry the image goes to (${target.registry})`);
    }
    const retry: RetryPolicy = { ...DEFAULT_RETRY_POLICY, attempts: options.retries ?? DEFAULT_RETRY_POLICY.attempts };
    const mountSources = [...new Set([from.repository, ...options.mountFrom])].filter((r) => r !== target.repository);
    const pushing = options.target !== null;
    const scopes = [`repository:${target.repository}:${pushing ? 'pull,push' : 'pull'}`, ...mountSources.map((r) => `repository:${r}:pull`)];
    const where = formatReference(from, from.tag);
    let session: RegistrySession;
    try {
      session = await openRegistry(target.registry, target.repository, options, { scopes, connections: CHECKS + 2, stallTimeoutMs: DEFAULT_STALL_TIMEOUT_MS, retry });
    } catch (err) {
      // Without a push, a registry out of reach only means building everything; with one, the push would fail too.
      if (pushing || !(err instanceof UserError)) throw err;
      warn(`registry cache ${where} ignored: ${err.message}`);
      return null;
    }
    let index: CacheIndex = new Map();
    try {
      const read = await readIndex(session.client, from);
      if (read === null) log(`registry cache ${where}: none yet`);
      else if ('problem' in read) warn(`registry cache ${where} ignored: ${read.problem}; layers are made instead`);
      else {
        index = read.index;
        log(`registry cache ${where}: ${index.size} layers known`);
      }
    } catch (err) {
      if (!(err instanceof UserError)) {
        await session.close();
        throw err;
      }
      warn(`registry cache ${where} ignored: ${session.secrets.scrub(err.message)}`);
    }
    return new RegistryLayers(session, index, target.repository, pushing ? mountSources : [], options.verify, warn);
  }

  /**
   * The index's entry for `key` when its blob is in the repository (or was mounted there) with the size
   * the entry says, and of the media type the build makes; with `verify`, also when its bytes hold the
   * entry's diffID. Null otherwise: the layer is made.
   */
  async find(key: string, mediaType: string): Promise<CacheIndexEntry | null> {
    const entry = this.index.get(key);
    if (!entry || entry.mediaType !== mediaType) return null;
    // By digest and size: a hostile index may name one blob with two sizes.
    const blob = `${entry.digest} ${entry.size}`;
    let present = this.#present.get(blob);
    if (!present) {
      present = this.#limit(() => this.#check(entry)).catch((err: unknown) => {
        if (!(err instanceof UserError)) throw err;
        // One warning: a refusal (no pull access) would otherwise be told for every layer.
        if (!this.#checkFailed) this.warn(`registry cache: ${this.session.secrets.scrub(err.message)}; layers it cannot check are made instead`);
        this.#checkFailed = true;
        return false;
      });
      this.#present.set(blob, present);
    }
    if (!(await present)) {
      if (!this.#checkFailed) this.#missing.add(key);
      return null;
    }
    if (this.verify) {
      let verified = this.#verified.get(entry.digest);
      if (!verified) {
        verified = this.fetch(entry, null).then(
          () => true,
          (err: unknown) => {
            if (!(err instanceof UserError)) throw err;
            this.warn(`registry cache: ${err.message}; the layer is made instead`);
            return false;
          },
        );
        this.#verified.set(entry.digest, verified);
      }
      if (!(await verified)) return null;
    }
    return entry;
  }

  async #check(entry: CacheIndexEntry): Promise<boolean> {
    const client = this.session.client;
    const size = await headBlobSize(client, this.repository, entry.digest);
    if (size !== null) return size === entry.size;
    for (const from of this.mountSources) {
      if ((await headBlobSize(client, from, entry.digest).catch(() => null)) !== entry.size) continue;
      if (await mountBlob(client, this.repository, entry.digest, from)) return true;
    }
    return false;
  }

  /**
   * Downloads a blob the registry holds, checking its digest and size (and with `verify`, its diffID)
   * as it streams, into `out` when given. A blob that does not match is a UserError.
   */
  async fetch(entry: CacheIndexEntry, out: LayerOutput | null): Promise<Written> {
    const client = this.session.client;
    const what = `blob ${entry.digest} in ${client.registry}/${this.repository}`;
    let res;
    try {
      res = await client.request({ method: 'GET', url: `/v2/${this.repository}/blobs/${entry.digest}`, retry: true });
    } catch (err) {
      throw client.networkError(err);
    }
    if (res.status !== 200) {
      await res.body.dump();
      throw new UserError(`${what} cannot be read (${res.status})`);
    }
    const digest = createHash('sha256');
    const compression = compressionOf(entry.mediaType);
    const diff = this.verify ? tarHasher(compression) : null;
    const invalid = (err: unknown) => new UserError(`a layer from the registry cache is not valid ${compression}: ${(err as Error).message}`);
    let size = 0;
    for await (const chunk of res.body as AsyncIterable<Buffer>) {
      if (size + chunk.length > entry.size) {
        res.body.destroy();
        throw new UserError(`${what} is larger than the ${entry.size} bytes the registry cache says`);
      }
      digest.update(chunk);
      await Promise.resolve(diff?.push(chunk)).catch((err: unknown) => {
        throw invalid(err);
      });
      if (out) await writeFully(out, chunk, out.at + size);
      size += chunk.length;
    }
    const actual = `sha256:${digest.digest('hex')}`;
    if (size !== entry.size || actual !== entry.digest) throw new UserError(`${what} does not hold the bytes its digest names (${size} bytes, ${actual})`);
    if (diff) {
      const { diffId } = await diff.end().catch((err: unknown) => {
        throw invalid(err);
      });
      if (diffId !== entry.diffId) throw new UserError(`${what} has diffID ${diffId}, not ${entry.diffId} as the registry cache says`);
    }
    return { digest: entry.digest, size: entry.size, diffId: entry.diffId, tarSize: entry.uncompressedSize };
  }

  /** A layer that is in the registry and nowhere here: a push there knows it present without asking again; nothing can read it. */
  layer(entry: CacheIndexEntry, contents: string[], compression: Compression): Layer {
    return { ...remoteLayer(entry, contents, compression), foundIn: `${this.session.client.registry}/${this.repository}` };
  }

  /** Ends the session, saying (once) how many of the index's layers were not in the registry. */
  close(): Promise<void> {
    const n = this.#missing.size;
    if (n > 0) {
      const where = `${this.session.client.registry}/${this.repository}`;
      this.warn(`registry cache: ${n} ${n === 1 ? 'layer it names is' : 'layers it names are'} not in ${where} with the digest and size it says; made instead`);
      this.#missing.clear();
    }
    return this.session.close();
  }
}

function remoteLayer(entry: CacheIndexEntry, contents: string[], compression: Compression): Layer {
  return {
    descriptor: { mediaType: entry.mediaType, digest: entry.digest, size: entry.size },
    diffId: entry.diffId,
    uncompressedSize: entry.uncompressedSize,
    compression,
    contents: [...new Set(contents)].sort(),
    open() {
      return new Readable({
        read() {
          this.destroy(new UserError(`layer ${entry.digest} was taken from the registry cache but the registry no longer has it; build again`));
        },
      });
    },
  };
}

/**
 * Merges `ours` into the index at `to` and pushes it (after the image, whose blobs the entries name),
 * unless it holds them already. Registries have no conditional PUT, so two builds updating one index at
 * once could each write a merge without the other's entries: each reads the index again a moment after
 * writing and, when its entries are gone, merges and writes once more. The moment (`settleMs`, by
 * default settleAfter) is twice what this build's own read, merge and write took: another build that
 * read before this write landed writes its merge about as long after its read. What is left is a
 * write landing after that second look (a build stalled for longer between its read and its write),
 * which costs only cache misses (the last writer wins).
 */
export async function pushCacheIndex(
  to: ImageReference,
  ours: CacheIndex,
  access: RegistryAccess & { retries?: number },
  log: (line: string) => void,
  settleMs?: number,
): Promise<void> {
  const retry: RetryPolicy = { ...DEFAULT_RETRY_POLICY, attempts: access.retries ?? DEFAULT_RETRY_POLICY.attempts };
  const tag = to.tag!;
  const where = formatReference(to, tag);
  const session = await openRegistry(to.registry, to.repository, access, {
    scopes: [`repository:${to.repository}:pull,push`],
    connections: 4,
    stallTimeoutMs: DEFAULT_STALL_TIMEOUT_MS,
    retry,
  });
  const current = async (): Promise<CacheIndex> => {
    const read = await readIndex(session.client, to);
    return read && 'index' in read ? read.index : new Map();
  };
  try {
    let readAt = performance.now();
    let held = await current();
    if (holdsEntries(held, ours)) {
      log(`registry cache ${where}: already holds this image's ${ours.size} layers`);
      return;
    }
    for (let attempt = 1; ; attempt++) {
      const merged = mergeCacheIndex(held, ours);
      const bytes = serializeCacheIndex(merged);
      await pushArtifact(session.client, to.repository, tag, artifactOf({ artifactType: CACHE_INDEX_ARTIFACT_TYPE, documentType: CACHE_INDEX_MEDIA_TYPE, document: bytes }), retry);
      await sleep(settleMs ?? settleAfter(performance.now() - readAt));
      readAt = performance.now();
      held = await current();
      const kept = holdsEntries(held, ours);
      if (kept || attempt === 3) {
        log(`registry cache ${where}: ${merged.size} layers (${formatBytes(bytes.length)})${kept ? '' : '; another build keeps writing it, this build\'s layers may be missing'}`);
        return;
      }
    }
  } catch (err) {
    throw session.secrets.error(err);
  } finally {
    await session.close();
  }
}

/**
 * How long after writing the index it is read again, to see whether another build's write replaced it:
 * twice the time from this build's read to its write landing (another build's read-merge-write takes
 * about as long on the same registry), at least MIN_SETTLE_MS (scheduling noise on a busy runner), at
 * most MAX_SETTLE_MS.
 */
export function settleAfter(readToWrittenMs: number): number {
  return Math.min(MAX_SETTLE_MS, Math.max(MIN_SETTLE_MS, Math.ceil(2 * readToWrittenMs)));
}
const MIN_SETTLE_MS = 200;
const MAX_SETTLE_MS = 10_000;

async function readIndex(client: RegistryClient, ref: ImageReference): Promise<{ index: CacheIndex } | { problem: string } | null> {
  try {
    const artifact = await fetchArtifact(client, ref.repository, ref.tag!, CACHE_INDEX_ARTIFACT_TYPE, MAX_INDEX_BYTES);
    return artifact && parseCacheIndex(artifact.bytes, isElfFactsList);
  } catch (err) {
    if (err instanceof ArtifactProblem) return { problem: err.message };
    throw err;
  }
}

async function writeFully(out: LayerOutput, bytes: Buffer, at: number): Promise<void> {
  for (let done = 0; done < bytes.length; ) {
    const { bytesWritten } = await out.handle.write(bytes, done, bytes.length - done, at + done);
    done += bytesWritten;
  }
}
