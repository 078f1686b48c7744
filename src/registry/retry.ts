/**
 * What is worth retrying against a registry, and how long to wait: bounded exponential backoff
 * with jitter (so parallel uploads that failed together do not retry together), and the
 * registry's own `Retry-After` when it sends one.
 */
export interface RetryPolicy {
  /** Failures in a row tolerated before giving up (a request is tried at most attempts + 1 times). */
  attempts: number;
  /** First backoff ceiling; doubles with every failure. */
  baseDelayMs: number;
  /** Ceiling for one backoff, and for an honoured Retry-After. */
  maxDelayMs: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = { attempts: 5, baseDelayMs: 500, maxDelayMs: 30_000 };

/** 408 Request Timeout, 429 Too Many Requests and every 5xx except 501 Not Implemented. */
export function isRetriableStatus(status: number): boolean {
  return status === 408 || status === 429 || (status >= 500 && status !== 501 && status <= 599);
}

const RETRIABLE_ERROR_CODES = new Set([
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'ECONNABORTED',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'EAI_AGAIN',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_RES_CONTENT_LENGTH_MISMATCH',
]);

/**
 * Network failures that a later attempt can get past: resets, closed sockets, stalls (undici's
 * header/body timeouts also fire when an upload stops draining). `ECONNREFUSED` only once the
 * registry has answered before (a restart), so a registry that is simply down fails at once.
 */
export function isRetriableError(err: unknown, { refusedIsRetriable }: { refusedIsRetriable: boolean }): boolean {
  const code = errorCode(err);
  if (code === undefined) return false;
  if (code === 'ECONNREFUSED') return refusedIsRetriable;
  return RETRIABLE_ERROR_CODES.has(code);
}

/** The `code` of an error or of the first error in its cause chain that has one. */
export function errorCode(err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; e && depth < 5; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string') return code;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

/** Milliseconds a `Retry-After` header asks for (delta-seconds or an HTTP date), or undefined. */
export function parseRetryAfter(value: string | undefined, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const date = Date.parse(trimmed);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/**
 * How long to wait before the next attempt after `failures` failures in a row (1 for the first):
 * between half and all of the doubling ceiling, so there is always some pause but no lockstep.
 * A Retry-After wins over the backoff, capped at maxDelayMs so a registry cannot park a push for hours.
 */
export function retryDelay(policy: RetryPolicy, failures: number, retryAfterMs?: number, random = Math.random): number {
  if (retryAfterMs !== undefined) return Math.min(retryAfterMs, policy.maxDelayMs);
  const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** Math.max(0, failures - 1));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/** Resolves after `ms`, or rejects with the signal's reason when it aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
