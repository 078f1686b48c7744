import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Blob } from '../model/image.js';
import { UserError } from '../util/errors.js';
import { describeFailure, formatFailure, readFailure, type RegistryClient } from './client.js';
import { oneLine, shownDigest } from './secrets.js';
import { isRetriableError, isRetriableStatus, parseRetryAfter, retryDelay, sleep, type RetryPolicy } from './retry.js';
import { describeNetworkError, firstHeader, type HttpResponse } from './transport.js';

/**
 * Gets one blob into a repository with as little traffic as possible: nothing when the registry
 * has it (HEAD), a cross-repository mount when another repository has it, otherwise an upload
 * streamed from disk: one PUT for a blob up to the chunk size, PATCH chunks for larger ones.
 * After a failure the upload continues from the offset the registry reports for the session
 * (GET on the upload URL); when the session is gone, a new one starts from byte 0.
 */
export type BlobOutcome = { kind: 'skipped' } | { kind: 'mounted'; from: string } | { kind: 'uploaded' };

export interface BlobProgress {
  /** Bytes of the blob the registry holds or that are on their way; goes back after a failed chunk. */
  transferred(bytes: number): void;
  retrying(reason: string, delayMs: number): void;
}

export interface BlobPushOptions {
  repository: string;
  /** Repositories on the same registry to try mounting from, in order. */
  mountFrom: string[];
  chunkSize: number;
  retry: RetryPolicy;
  progress: BlobProgress;
  /** The caller has just checked (blobExists) that the repository lacks the blob. */
  knownMissing?: boolean;
  /** Mount sources that refused us once (no pull access): not asked again for later blobs. */
  refusedMountSources?: Set<string>;
  signal?: AbortSignal;
}

/** A failure a later attempt can get past, with the registry's Retry-After when it sent one. */
class TransientFailure extends Error {
  constructor(
    message: string,
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

export async function pushBlob(client: RegistryClient, blob: Blob, options: BlobPushOptions): Promise<BlobOutcome> {
  return new BlobUpload(client, blob, options).run();
}

/**
 * Whether the repository has the blob (HEAD). Separate from pushBlob so that a push can check many
 * blobs at once (cheap requests) while uploading only a few at a time.
 */
export async function blobExists(client: RegistryClient, repository: string, digest: string): Promise<boolean> {
  try {
    return await headBlob(client, repository, digest);
  } catch (err) {
    if (err instanceof UserError || client.aborted) throw err;
    const why = describeNetworkError(err, client.baseUrl.host);
    throw new UserError(`checking for blob ${digest} in ${client.registry}/${repository} failed: ${why}`, { cause: err });
  }
}

async function headBlob(client: RegistryClient, repository: string, digest: string): Promise<boolean> {
  return (await headBlobSize(client, repository, digest)) !== null;
}

/**
 * The size the repository states for a blob it holds (HEAD; -1 when it states none), or null when it
 * lacks the blob. A refusal or another status is a UserError.
 */
export async function headBlobSize(client: RegistryClient, repository: string, digest: string): Promise<number | null> {
  const res = await client.request({ method: 'HEAD', url: `/v2/${repository}/blobs/${digest}`, retry: true });
  await res.body.dump();
  if (res.status === 200) {
    const size = Number(firstHeader(res.headers, 'content-length') ?? -1);
    return Number.isSafeInteger(size) && size >= 0 ? size : -1;
  }
  if (res.status === 404) return null;
  const hint = res.status === 401 || res.status === 403 ? ` (${client.auth.describeIdentity()} has no access)` : '';
  throw new UserError(`checking for blob ${digest} in ${client.registry}/${repository} failed: ${res.status}${hint}`);
}

/**
 * Mounts a blob into `repository` from `from` on the same registry; false when the registry would not
 * (the upload session it may have opened instead is closed).
 */
export async function mountBlob(client: RegistryClient, repository: string, digest: string, from: string): Promise<boolean> {
  const query = `mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(from)}`;
  const res = await client.request({ method: 'POST', url: `/v2/${repository}/blobs/uploads/?${query}`, retry: true });
  await res.body.dump();
  if (res.status === 201) return true;
  const location = firstHeader(res.headers, 'location');
  if (res.status === 202 && location) {
    await client
      .request({ method: 'DELETE', url: new URL(location, client.baseUrl) })
      .then((r) => r.body.dump())
      .catch(() => {});
  }
  return false;
}

class BlobUpload {
  private readonly digest: string;
  private readonly size: number;
  private readonly blobsPath: string;
  /** The current upload session's URL (it changes with every chunk: it carries the session state). */
  private location: URL | undefined;
  /** Bytes the registry has confirmed for the current session. */
  private offset = 0;
  /**
   * A failure reading the blob from disk. Kept aside because the request it breaks may report
   * something else first (the socket closing under it), and no retry can fix it.
   */
  private readFailure: UserError | undefined;

  constructor(
    private readonly client: RegistryClient,
    private readonly blob: Blob,
    private readonly options: BlobPushOptions,
  ) {
    this.digest = blob.descriptor.digest;
    this.size = blob.descriptor.size;
    this.blobsPath = `/v2/${options.repository}/blobs`;
  }

  async run(): Promise<BlobOutcome> {
    const { retry, progress, signal } = this.options;
    try {
      if (!this.options.knownMissing && (await this.exists())) return { kind: 'skipped' };
      const mounted = await this.tryMounts();
      if (mounted) return mounted;
    } catch (err) {
      throw this.fatal(err);
    }

    // Failures in a row count against the budget until the upload gets further than it ever got
    // (a session that restarts from byte 0 after each failure makes no progress, however many chunks it sends).
    let failures = 0;
    let furthest = 0;
    let recovering = false;
    for (;;) {
      try {
        if (recovering) {
          if (await this.exists()) break; // the last request went through after all
          await this.recoverSession();
          recovering = false;
        }
        await this.upload();
        break;
      } catch (err) {
        if (signal?.aborted) throw err;
        const transient = this.classify(err);
        if (this.offset > furthest) {
          furthest = this.offset;
          failures = 0;
        }
        if (++failures > retry.attempts) {
          throw new UserError(
            `pushing blob ${this.digest} to ${this.where()} failed after ${failures} attempts: ${transient.message}`,
          );
        }
        const delay = retryDelay(retry, failures, transient.retryAfterMs);
        progress.transferred(this.offset);
        progress.retrying(transient.message, delay);
        await sleep(delay, signal);
        recovering = true;
      }
    }
    progress.transferred(this.size);
    return { kind: 'uploaded' };
  }

  private exists(): Promise<boolean> {
    return headBlob(this.client, this.options.repository, this.digest);
  }

  private async tryMounts(): Promise<BlobOutcome | undefined> {
    const refused = this.options.refusedMountSources ?? new Set<string>();
    const sources = this.options.mountFrom.filter((s) => s !== this.options.repository && !refused.has(s));
    for (const [index, from] of sources.entries()) {
      const query = `mount=${encodeURIComponent(this.digest)}&from=${encodeURIComponent(from)}`;
      const res = await this.client.request({ method: 'POST', url: `${this.blobsPath}/uploads/?${query}`, retry: true });
      await res.body.dump();
      if (res.status === 201) return { kind: 'mounted', from };
      if (res.status === 401 || res.status === 403) {
        refused.add(from);
        continue;
      }
      if (res.status !== 202) continue;
      // Not mountable from there, but the registry opened an upload session: use the last one, close the others.
      const location = this.locationOf(res);
      if (index === sources.length - 1 && location) {
        this.location = location;
        this.offset = 0;
      } else if (location) {
        await this.client
          .request({ method: 'DELETE', url: location })
          .then((r) => r.body.dump())
          .catch(() => {});
      }
    }
    return undefined;
  }

  /** Uploads from the current session and offset (a new session when there is none) to the end. */
  private async upload(): Promise<void> {
    if (!this.location) await this.startSession();
    if (this.offset === 0 && this.size <= this.options.chunkSize) {
      await this.finish(this.size); // one PUT with the whole blob
      return;
    }
    while (this.offset < this.size) {
      await this.patchChunk(Math.min(this.options.chunkSize, this.size - this.offset));
    }
    await this.finish(0);
  }

  private async startSession(): Promise<void> {
    const res = await this.client.request({ method: 'POST', url: `${this.blobsPath}/uploads/` });
    if (res.status !== 202) throw await this.failure(res, 'starting an upload');
    await res.body.dump();
    const location = this.locationOf(res);
    if (!location) throw new UserError(`${this.where()} started an upload for blob ${this.digest} but sent no Location`);
    this.location = location;
    this.offset = 0;
  }

  private async patchChunk(length: number): Promise<void> {
    const start = this.offset;
    const end = start + length - 1;
    const res = await this.client.request({
      method: 'PATCH',
      url: this.location!,
      headers: {
        'content-type': 'application/octet-stream',
        'content-length': String(length),
        'content-range': `${start}-${end}`,
      },
      body: () => Readable.from(this.read(start, length), { objectMode: false }),
    });
    if (res.status !== 202 && res.status !== 204) throw await this.failure(res, `uploading bytes ${start}-${end}`);
    await res.body.dump();
    this.location = this.locationOf(res) ?? this.location;
    const confirmed = parseRange(firstHeader(res.headers, 'range'), start + length);
    if (confirmed === undefined || confirmed > start + length) {
      throw new TransientFailure(`the registry reported an unexpected upload range after bytes ${start}-${end}`);
    }
    this.offset = confirmed;
  }

  /** The closing PUT with `?digest=`, carrying the last `length` bytes (all of a small blob, or none). */
  private async finish(length: number): Promise<void> {
    const url = new URL(this.location!);
    url.search += `${url.search ? '&' : '?'}digest=${encodeURIComponent(this.digest)}`;
    const start = this.offset;
    const res = await this.client.request({
      method: 'PUT',
      url,
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(length) },
      ...(length > 0 && { body: () => Readable.from(this.read(start, length), { objectMode: false }) }),
    });
    if (res.status !== 201 && res.status !== 204) throw await this.failure(res, 'completing the upload');
    await res.body.dump();
    const stored = firstHeader(res.headers, 'docker-content-digest');
    if (stored && stored !== this.digest) {
      throw new UserError(`${this.where()} stored blob ${this.digest} as ${shownDigest(stored)}: the blob file does not match its digest`);
    }
    this.offset = this.size;
  }

  /**
   * Asks the registry how much of the session it holds (and gets a fresh session URL); a session the
   * registry no longer knows (expired, or invalidated by a partly written chunk) means a new one.
   */
  private async recoverSession(): Promise<void> {
    if (this.location) {
      const res = await this.client.request({ method: 'GET', url: this.location, retry: true });
      if (res.status === 204 || res.status === 200 || res.status === 404 || res.status === 400 || res.status === 416) {
        await res.body.dump();
      }
      if (res.status === 204 || res.status === 200) {
        const held = parseRange(firstHeader(res.headers, 'range'), undefined);
        if (held !== undefined && held <= this.size) {
          this.location = this.locationOf(res) ?? this.location;
          this.offset = held;
          this.options.progress.transferred(this.offset);
          return;
        }
      } else if (res.status !== 404 && res.status !== 400 && res.status !== 416) {
        throw await this.failure(res, 'asking for the upload status');
      }
    }
    this.location = undefined;
    this.offset = 0;
    this.options.progress.transferred(0);
  }

  /** The blob's bytes from `start`, `length` of them, streamed from disk and counted for progress. */
  private async *read(start: number, length: number): AsyncGenerator<Buffer> {
    const stream = this.blob.open(start);
    const chunks = stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
    let remaining = length;
    try {
      while (remaining > 0) {
        let next: IteratorResult<Buffer>;
        try {
          next = await chunks.next();
        } catch (err) {
          // A local failure (the file went away, a read error), not the network's: no retry will help.
          const { code, path } = err as NodeJS.ErrnoException;
          const why = code ? `${code}${path ? ` ${path}` : ''}` : (err as Error).message;
          throw (this.readFailure = new UserError(`cannot read blob ${this.digest} at byte offset ${start + length - remaining}: ${why}`));
        }
        if (next.done) {
          const at = start + length - remaining;
          throw (this.readFailure = new UserError(`blob ${this.digest} ends at byte offset ${at}, before its size ${this.size}`));
        }
        const piece = next.value.length > remaining ? next.value.subarray(0, remaining) : next.value;
        remaining -= piece.length;
        yield piece;
        this.options.progress.transferred(start + length - remaining);
      }
    } finally {
      stream.destroy();
    }
  }

  /**
   * Where the registry says the upload goes on. It may be another origin (blob storage): no
   * Authorization goes there; and it must stay https (checked when it is used, like every request).
   */
  private locationOf(res: HttpResponse): URL | undefined {
    const location = firstHeader(res.headers, 'location');
    if (!location) return undefined;
    const shown = () => this.client.secrets.foreign(oneLine(location).slice(0, 200));
    let url: URL;
    try {
      url = new URL(location, res.url);
    } catch {
      throw new UserError(`${this.where()} sent an invalid upload location "${shown()}" for blob ${this.digest}`);
    }
    if (url.protocol !== 'https:' && !(url.protocol === 'http:' && this.client.plainHttpAllowed)) {
      throw new UserError(
        `${this.where()} sent an upload location that is not https (${this.client.secrets.foreign(oneLine(url.origin))}) for blob ${this.digest}: its bytes are not sent in clear (allowed only with --tls-verify=false)`,
      );
    }
    return url;
  }

  /** A non-success status: transient (retry, resume) or a refusal that no retry will fix. */
  private async failure(res: HttpResponse, doing: string): Promise<Error> {
    const status = res.status;
    if (isRetriableStatus(status) || status === 400 || status === 404 || status === 416) {
      const failure = await readFailure(res);
      const detail = formatFailure(failure, this.client.secrets);
      // The bytes the registry got do not hash to the digest: sending the same bytes again cannot help.
      if (failure.code === 'DIGEST_INVALID') return this.digestRefused(detail);
      // 400/404/416 on an upload mean the session went bad (e.g. a partly written chunk): start over.
      const retryAfter = parseRetryAfter(firstHeader(res.headers, 'retry-after'));
      return new TransientFailure(`${doing}: ${detail}`, retryAfter);
    }
    return this.refusal(res, doing);
  }

  /**
   * The registry refused the blob's bytes as not matching its digest. Hashes the source to say whose
   * fault it is: a blob file that is damaged or was changed, or something on the way that changed them.
   */
  private async digestRefused(detail: string): Promise<UserError> {
    const hash = createHash('sha256');
    let size = 0;
    try {
      for await (const chunk of this.blob.open(0)) {
        hash.update(chunk as Buffer);
        size += (chunk as Buffer).length;
      }
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      return new UserError(`pushing blob ${this.digest} to ${this.where()}: the registry refused its bytes (${detail}), and the blob cannot be read again to check it: ${code ?? (err as Error).message}`);
    }
    const actual = `sha256:${hash.digest('hex')}`;
    if (actual !== this.digest || size !== this.size) {
      return new UserError(
        `pushing blob ${this.digest} to ${this.where()}: the image's blob does not match its digest (its ${size} bytes hash to ${actual}): the image is damaged or was changed after it was written; the registry refused it (${detail})`,
      );
    }
    return new UserError(
      `pushing blob ${this.digest} to ${this.where()}: the registry refused the bytes it received (${detail}), although the blob matches its digest: they were changed on the way (a proxy?); not retried`,
    );
  }

  private async refusal(res: HttpResponse, doing: string): Promise<UserError> {
    const detail = await describeFailure(res, this.client.secrets);
    const hint =
      res.status === 401 || res.status === 403
        ? ` (${this.client.auth.describeIdentity()} has no push access)`
        : res.status === 413
          ? ' (try a smaller --chunk-size)'
          : '';
    return new UserError(`pushing blob ${this.digest} to ${this.where()} failed ${doing}: ${detail}${hint}`);
  }

  private classify(err: unknown): TransientFailure {
    if (this.readFailure) throw this.readFailure;
    if (err instanceof TransientFailure) return err;
    if (!(err instanceof UserError) && isRetriableError(err, { refusedIsRetriable: true })) {
      return new TransientFailure(describeNetworkError(err, this.client.baseUrl.host));
    }
    throw this.fatal(err);
  }

  private fatal(err: unknown): Error {
    if (err instanceof UserError || this.options.signal?.aborted) return err as Error;
    return new UserError(`pushing blob ${this.digest} to ${this.where()} failed: ${describeNetworkError(err, this.client.baseUrl.host)}`, {
      cause: err,
    });
  }

  private where(): string {
    return `${this.client.registry}/${this.options.repository}`;
  }
}

/**
 * Bytes held according to a `Range: 0-<last>` header. distribution answers `0-0` both for an empty
 * session and for one byte; `expected` (what a successful chunk should have made it) settles that.
 */
export function parseRange(header: string | undefined, expected: number | undefined): number | undefined {
  if (header === undefined) return expected;
  const match = /^(?:bytes=)?0-(-?\d+)$/.exec(header.trim());
  if (!match) return undefined;
  const last = Number(match[1]);
  if (last <= 0) return expected === 1 && last === 0 ? 1 : 0;
  return last + 1;
}
