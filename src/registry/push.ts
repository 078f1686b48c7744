import { createHash } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { Readable } from 'node:stream';
import pLimit from 'p-limit';
import type { Blob, Compression, Image } from '../model/image.js';
import { UserError } from '../util/errors.js';
import { writeFileAtomically } from '../util/atomic.js';
import { blobExists, pushBlob, type BlobOutcome } from './blob-upload.js';
import type { RegistryClient } from './client.js';
import { openRegistry, type RegistryAccess, type RegistrySession } from './connect.js';
import { Secrets } from './secrets.js';
import { pushManifest } from './manifest-push.js';
import { artifactBlobs } from './artifact.js';
import { pushReferrers, type ReferrersOutcome } from './referrers.js';
import { referrersTag } from '../model/artifact.js';
import { allSources, mountSources, sourcesFor, type MountSources } from './mount-sources.js';
import { silentProgress, type PushProgress } from './progress.js';
import { formatReference, parseReference, parseRepository, parseTag, type ImageReference } from '../model/reference.js';
import { DEFAULT_RETRY_POLICY, type RetryPolicy } from './retry.js';
import { DEFAULT_CHUNK_SIZE, DEFAULT_JOBS } from './push-defaults.js';
import { formatBytes } from '../util/units.js';
import { storePathName } from '../nix/store-path.js';

export interface PushOptions extends RegistryAccess {
  /** More tags besides the reference's own (`--tag`, repeatable). */
  tags?: string[];
  /** Blobs in flight at once (default 4). */
  jobs?: number;
  /** Blobs up to this size go in one PUT; larger ones in PATCH chunks of this size (default 64 MiB). */
  chunkSize?: number;
  /** Repositories on the same registry to mount blobs from (`--mount-from`, repeatable). */
  mountFrom?: string[];
  /** Failures in a row tolerated per request or blob (default 5). */
  retries?: number;
  /** First backoff delay (default 500 ms); doubles per failure. */
  retryDelayMs?: number;
  /** A request with no progress for this long is abandoned and retried (default 60 s). */
  stallTimeoutMs?: number;
  /** `--digestfile`: written (atomically) with the manifest digest. */
  digestFile?: string;
  /** Who is told how the push goes, given the bytes it will move at most (default: nobody). */
  progress?: (totalBytes: number) => PushProgress;
  signal?: AbortSignal;
}

export interface PushResult {
  /** The manifest digest. */
  digest: string;
  /** `registry/repository:tag@digest` (the first tag). */
  reference: string;
  /** Digests of blobs sent, found already present, and mounted from another repository. */
  uploaded: string[];
  skipped: string[];
  mounted: string[];
  /** The attachments (SBOM, provenance) pushed as referrers of the image, and how they are found. */
  referrers?: { digests: string[]; via: ReferrersOutcome };
}

export { DEFAULT_CHUNK_SIZE, DEFAULT_JOBS };
export const DEFAULT_STALL_TIMEOUT_MS = 60_000;
/** Blobs checked for at once (HEAD requests): a warm push of 100 layers is a few round trips. */
const EXISTENCE_CHECKS = 16;

/**
 * Pushes an image: every blob the registry lacks (layers, then the config; `jobs` at a time),
 * then the manifest under each tag, only after every blob is confirmed. Safe to run again after
 * a failure: what the registry holds is skipped. Credentials and tokens never reach the output.
 */
export async function pushImage(image: Image, reference: string | ImageReference, options: PushOptions = {}): Promise<PushResult> {
  const plan = planPush(image, reference, options);
  const secrets = new Secrets();
  // Stops the other uploads when one fails, and follows the caller's signal.
  const stop = new AbortController();
  setMaxListeners(Infinity, stop.signal); // every request in flight listens to it: dozens at once is normal
  const onAbort = () => stop.abort(options.signal!.reason);
  options.signal?.addEventListener('abort', onAbort, { once: true });
  // Every line a push prints passes through the secrets: a registry may echo what it was sent.
  const progress = scrubbedProgress(options.progress?.(totalSize(plan.blobs)) ?? silentProgress, secrets);
  let session: RegistrySession | undefined;
  try {
    session = await openRegistry(plan.ref.registry, plan.ref.repository, options, {
      scopes: scopesFor(plan),
      connections: plan.checks + 2,
      stallTimeoutMs: options.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS,
      retry: plan.retry,
      secrets,
      signal: stop.signal,
    });
    const { client } = session;

    progress.note(`pushing ${plan.blobs.length} blobs (${formatBytes(totalSize(plan.blobs))}) to ${formatReference(plan.ref)}`);
    const outcomes = await pushBlobs(client, plan, progress, stop);
    if (!outcomes) throw options.signal?.aborted ? options.signal.reason : stop.signal.reason;

    const digest = await pushManifest(client, plan.ref.repository, image, plan.tags);
    const result: PushResult = { digest, reference: formatReference(plan.ref, plan.tags[0], digest), uploaded: [], skipped: [], mounted: [] };
    if (image.attachments?.length) {
      const subject = { mediaType: image.manifestMediaType, digest, size: image.manifestBytes.length };
      const how = await pushReferrers(client, plan.ref.repository, subject, image.attachments);
      result.referrers = { digests: image.attachments.map((a) => a.descriptor.digest), via: how };
      progress.note(`attached ${image.attachments.length} document${image.attachments.length === 1 ? '' : 's'} (${how === 'referrers-api' ? "the registry's referrers API" : `referrers tag ${referrersTag(digest)}`})`);
    }
    for (const [blobDigest, outcome] of outcomes) result[OUTCOME_LIST[outcome.kind]].push(blobDigest);
    for (const tag of plan.tags.slice(1)) progress.note(`tagged ${formatReference(plan.ref, tag)}`);
    if (options.digestFile) await writeFileAtomically(options.digestFile, digest);
    progress.stop();
    return result;
  } catch (err) {
    throw secrets.error(err);
  } finally {
    progress.stop();
    options.signal?.removeEventListener('abort', onAbort);
    await session?.close();
  }
}

const OUTCOME_LIST = { uploaded: 'uploaded', skipped: 'skipped', mounted: 'mounted' } as const;

/** What a push will do, from the image and the options, checked before anything is sent. */
interface PushPlan {
  ref: ImageReference;
  tags: string[];
  blobs: LabelledBlob[];
  mountSources: MountSources;
  jobs: number;
  /** Existence checks (HEAD) in flight at once. */
  checks: number;
  chunkSize: number;
  retry: RetryPolicy;
}

function planPush(image: Image, reference: string | ImageReference, options: PushOptions): PushPlan {
  const ref = typeof reference === 'string' ? parseReference(reference) : reference;
  const manifestDigest = `sha256:${createHash('sha256').update(image.manifestBytes).digest('hex')}`;
  if (ref.digest && ref.digest !== manifestDigest) {
    throw new UserError(`the image's manifest digest is ${manifestDigest}, not ${ref.digest} as the reference says`);
  }
  const jobs = checkedInteger(options.jobs ?? DEFAULT_JOBS, '--jobs', 1, 64);
  return {
    ref,
    tags: tagsFor(ref, options.tags ?? []),
    blobs: blobsOf(image),
    mountSources: mountSources(image, ref.registry, (options.mountFrom ?? []).map(parseRepository)),
    jobs,
    checks: Math.max(jobs, EXISTENCE_CHECKS),
    chunkSize: checkedInteger(options.chunkSize ?? DEFAULT_CHUNK_SIZE, '--chunk-size', 1024, 2 ** 40),
    retry: {
      ...DEFAULT_RETRY_POLICY,
      attempts: checkedInteger(options.retries ?? DEFAULT_RETRY_POLICY.attempts, '--retries', 0, 100),
      baseDelayMs: options.retryDelayMs ?? DEFAULT_RETRY_POLICY.baseDelayMs,
    },
  };
}

/** Push and pull on the target; pull on each mount source (a token without it cannot mount). */
function scopesFor(plan: PushPlan): string[] {
  const mounts = allSources(plan.mountSources).filter((r) => r !== plan.ref.repository);
  return [`repository:${plan.ref.repository}:pull,push`, ...mounts.map((r) => `repository:${r}:pull`)];
}

/**
 * Every blob, checked for (HEAD, many at once: cheap for the registry) and uploaded when missing
 * (`jobs` at a time). The first failure stops the rest; then the result is undefined and `stop`'s
 * reason is the failure.
 */
async function pushBlobs(
  client: RegistryClient,
  plan: PushPlan,
  progress: PushProgress,
  stop: AbortController,
): Promise<Array<[string, BlobOutcome]> | undefined> {
  const checkLimit = pLimit(plan.checks);
  const uploadLimit = pLimit(plan.jobs);
  const refusedMountSources = new Set<string>();
  const pushOne = async ({ blob, label }: LabelledBlob): Promise<[string, BlobOutcome]> => {
    const { digest, size } = blob.descriptor;
    const present =
      blob.foundIn === `${client.registry}/${plan.ref.repository}` ||
      (await checkLimit(() => {
        stop.signal.throwIfAborted();
        return blobExists(client, plan.ref.repository, digest);
      }));
    if (present) {
      progress.blob(digest, size, label).finished({ kind: 'skipped' });
      return [digest, { kind: 'skipped' }];
    }
    return uploadLimit(async () => {
      stop.signal.throwIfAborted();
      const reporter = progress.blob(digest, size, label);
      const outcome = await pushBlob(client, blob, {
        repository: plan.ref.repository,
        mountFrom: sourcesFor(plan.mountSources, digest),
        chunkSize: plan.chunkSize,
        retry: plan.retry,
        progress: reporter,
        knownMissing: true,
        refusedMountSources,
        signal: stop.signal,
      });
      reporter.finished(outcome);
      return [digest, outcome];
    });
  };
  const settled = await Promise.allSettled(
    plan.blobs.map((b) =>
      pushOne(b).catch((err: unknown) => {
        if (!stop.signal.aborted) stop.abort(err);
        throw err;
      }),
    ),
  );
  if (settled.some((s) => s.status === 'rejected')) return undefined;
  return settled.map((s) => (s as PromiseFulfilledResult<[string, BlobOutcome]>).value);
}

/** The reference's tag and the extra tags; `latest` when neither names one (and no digest is given). */
function tagsFor(ref: ImageReference, extra: string[]): string[] {
  const tags = [...(ref.tag ? [ref.tag] : []), ...extra.map(parseTag)];
  if (tags.length === 0 && !ref.digest) tags.push('latest');
  return [...new Set(tags)];
}

function checkedInteger(value: number, name: string, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) throw new UserError(`${name} must be a whole number from ${min} to ${max}`);
  return value;
}

interface LabelledBlob {
  blob: Blob;
  label?: string;
}

/** Layers in order, then the config; a layer that appears twice is pushed once. */
function blobsOf(image: Image): LabelledBlob[] {
  const seen = new Set<string>();
  const blobs: LabelledBlob[] = [];
  for (const layer of image.layers) {
    if (seen.has(layer.descriptor.digest)) continue;
    seen.add(layer.descriptor.digest);
    blobs.push({ blob: layer, label: layerLabel(layer.contents, layer.compression) });
  }
  const config: Blob = {
    descriptor: image.configDescriptor,
    open: (start = 0) => Readable.from([image.configBytes.subarray(start)]),
  };
  if (!seen.has(config.descriptor.digest)) blobs.push({ blob: config, label: 'config' });
  seen.add(config.descriptor.digest);
  for (const blob of artifactBlobs(image.attachments ?? [])) {
    if (!seen.has(blob.descriptor.digest)) blobs.push({ blob, label: 'attachment' });
    seen.add(blob.descriptor.digest);
  }
  return blobs;
}

function totalSize(blobs: LabelledBlob[]): number {
  return blobs.reduce((sum, b) => sum + b.blob.descriptor.size, 0);
}

/** `python3-3.11.9 (zstd)` for `/nix/store/<hash>-python3-3.11.9`; `+N` when the layer holds more. */
function layerLabel(contents: string[] | undefined, compression: Compression): string {
  const how = `(${compression === 'none' ? 'uncompressed' : compression})`;
  if (!contents?.length) return how;
  const first = storePathName(contents[0]!);
  return `${contents.length > 1 ? `${first} +${contents.length - 1}` : first} ${how}`;
}

/** The progress display with every line it is given scrubbed of secrets first. */
function scrubbedProgress(progress: PushProgress, secrets: Secrets): PushProgress {
  return {
    blob(digest, size, label) {
      const reporter = progress.blob(digest, size, label === undefined ? undefined : secrets.scrub(label));
      return {
        transferred: (bytes) => reporter.transferred(bytes),
        retrying: (reason, delayMs) => reporter.retrying(secrets.scrub(reason), delayMs),
        finished: (outcome) => reporter.finished(outcome.kind === 'mounted' ? { ...outcome, from: secrets.scrub(outcome.from) } : outcome),
      };
    },
    note: (message) => progress.note(secrets.scrub(message)),
    stop: () => progress.stop(),
  };
}
