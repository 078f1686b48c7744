import type { Agent } from 'undici';
import { UserError } from '../util/errors.js';
import { RegistryAuth } from './auth.js';
import { oneLine, Secrets } from './secrets.js';
import type { Credentials } from './credentials.js';
import { isRetriableError, isRetriableStatus, parseRetryAfter, retryDelay, sleep, type RetryPolicy } from './retry.js';
import {
  describeNetworkError,
  firstHeader,
  isTlsProtocolError,
  readText,
  send,
  type HttpRequest,
  type HttpResponse,
} from './transport.js';

/**
 * A connection to one registry: its base URL (https, or http when allowed and the registry does
 * not speak TLS), its auth, and requests that carry the Authorization header, renew it once on a
 * 401, and (when `retry` is set) retry 5xx, 429 and network failures with backoff.
 */
export interface RegistryRequest extends Omit<HttpRequest, 'url' | 'authorization' | 'authorizationOrigin' | 'signal'> {
  /** A path (`/v2/…`) on the registry, or an absolute URL the registry handed out (an upload location). */
  url: string | URL;
  /** Retry on 5xx/429/resets. Leave false for requests whose repetition needs the caller's care (uploads). */
  retry?: boolean;
}

export interface ConnectOptions {
  registry: string;
  /** host:port to connect to (differs from `registry` for Docker Hub). */
  endpoint: string;
  agent: Agent;
  credentials?: Credentials;
  scopes: string[];
  tlsVerify: boolean;
  retry: RetryPolicy;
  /** Where issued tokens are registered, and what scrubs text the registry sends back. */
  secrets?: Secrets;
  signal?: AbortSignal;
}

export class RegistryClient {
  /** Set once a request has reached the registry: later refusals are worth retrying (a restart). */
  private reachable = false;

  private constructor(
    readonly registry: string,
    readonly baseUrl: URL,
    private readonly agent: Agent,
    readonly auth: RegistryAuth,
    private readonly retryPolicy: RetryPolicy,
    private readonly allowPlainHttp: boolean,
    private readonly signal: AbortSignal | undefined,
    readonly secrets: Secrets,
  ) {}

  /**
   * Pings `/v2/` (https first; plain http only with tlsVerify off and when the port does not speak
   * TLS), learns the auth scheme from the 401 challenge, and checks the credentials right away so a
   * wrong password fails before any upload.
   */
  static async connect(options: ConnectOptions): Promise<RegistryClient> {
    const { registry, endpoint, agent, tlsVerify, signal } = options;
    const secrets = options.secrets ?? new Secrets();
    const auth = new RegistryAuth({
      registry,
      credentials: options.credentials,
      scopes: options.scopes,
      agent,
      retry: options.retry,
      secrets,
      allowHttp: !tlsVerify,
      signal,
    });
    let client = new RegistryClient(registry, new URL(`https://${endpoint}/`), agent, auth, options.retry, !tlsVerify, signal, secrets);
    let ping: HttpResponse;
    try {
      ping = await client.ping();
    } catch (err) {
      if (tlsVerify || signal?.aborted || !isTlsProtocolError(err)) throw client.networkError(err);
      client = new RegistryClient(registry, new URL(`http://${endpoint}/`), agent, auth, options.retry, true, signal, secrets);
      try {
        ping = await client.ping();
      } catch (plainErr) {
        throw client.networkError(plainErr);
      }
    }
    client.reachable = true;

    if (ping.status === 401) {
      if (!auth.useChallenge(firstHeader(ping.headers, 'www-authenticate'))) {
        throw new UserError(`${registry} asks for an authentication scheme nix2oci does not support (only Basic and Bearer)`);
      }
      // Basic: try the password now; Bearer: fetch the token now. Either fails here with a clear message.
      const check = await client.request({ method: 'GET', url: '/v2/', retry: true });
      await check.body.dump();
      if (check.status === 401 || check.status === 403) {
        throw new UserError(`login to ${registry} failed: the registry refused ${auth.describeIdentity()} (${check.status})`);
      }
      if (check.status !== 200) throw new UserError(`${registry}/v2/ answered ${check.status} after login`);
    } else if (isRetriableStatus(ping.status)) {
      const attempts = options.retry.attempts + 1;
      throw new UserError(`${client.baseUrl.origin}/v2/ answered ${ping.status} ${attempts === 1 ? 'once' : `${attempts} times`} (--retries ${options.retry.attempts}): the registry is failing`);
    } else if (ping.status !== 200) {
      throw new UserError(`${client.baseUrl.origin}/v2/ answered ${ping.status}: is this an OCI registry?`);
    }
    return client;
  }

  /**
   * GET /v2/ without credentials, retried like every request (server errors, 429, resets, stalls, up to
   * --retries failures in a row). Only a refused connection fails at once: a registry that is down.
   */
  private async ping(): Promise<HttpResponse> {
    const res = await this.request({ method: 'GET', url: '/v2/', retry: true }, { authenticate: false });
    await res.body.dump();
    return res;
  }

  /** Sends a request to the registry; the response body must be consumed or dumped by the caller. */
  async request(request: RegistryRequest, { authenticate = true } = {}): Promise<HttpResponse> {
    const url = typeof request.url === 'string' ? new URL(request.url, this.baseUrl) : request.url;
    const attempts = this.retryPolicy.attempts;
    for (let failures = 0; ; ) {
      let res: HttpResponse;
      try {
        res = await this.sendAuthenticated({ ...request, url }, authenticate);
      } catch (err) {
        if (err instanceof UserError || this.signal?.aborted) throw err;
        if (request.retry && ++failures <= attempts && isRetriableError(err, { refusedIsRetriable: this.reachable })) {
          await sleep(retryDelay(this.retryPolicy, failures), this.signal);
          continue;
        }
        throw err;
      }
      if (request.retry && isRetriableStatus(res.status) && ++failures <= attempts) {
        await res.body.dump();
        await sleep(retryDelay(this.retryPolicy, failures, parseRetryAfter(firstHeader(res.headers, 'retry-after'))), this.signal);
        continue;
      }
      return res;
    }
  }

  private async sendAuthenticated(request: RegistryRequest & { url: URL }, authenticate: boolean): Promise<HttpResponse> {
    const origin = this.baseUrl.origin;
    const attempt = async () => {
      const authorization = authenticate ? await this.auth.authorization() : undefined;
      const res = await send(this.agent, {
        ...request,
        authorization,
        authorizationOrigin: origin,
        allowPlainHttp: this.allowPlainHttp,
        secrets: this.secrets,
        signal: this.signal,
      });
      return { res, sent: res.authorized ? authorization : undefined };
    };
    const { res, sent } = await attempt();
    if (res.status !== 401 || !authenticate || res.url.origin !== origin) return res;
    // Renew once (an expired token, a scope the registry wants added); a second 401 goes to the caller.
    if (!(await this.auth.renew(firstHeader(res.headers, 'www-authenticate'), sent))) return res;
    await res.body.dump();
    return (await attempt()).res;
  }

  /** Whether requests may go over plain http (--tls-verify=false). */
  get plainHttpAllowed(): boolean {
    return this.allowPlainHttp;
  }

  /** Whether the push this client serves was stopped (a failure elsewhere, or the caller's signal). */
  get aborted(): boolean {
    return this.signal?.aborted ?? false;
  }

  /** Turns a network failure into a one-line UserError naming the registry. */
  networkError(err: unknown): Error {
    if (err instanceof UserError) return err;
    if (this.signal?.aborted) return err instanceof Error ? err : new Error(String(err));
    return new UserError(describeNetworkError(err, this.baseUrl.host), { cause: err });
  }
}

/**
 * `404 BLOB_UNKNOWN: blob unknown to registry` from a registry's error document, or just the status.
 * The registry's words are text from outside: scrubbed of secrets (a registry may echo the Authorization
 * header it got), on one line.
 */
export async function describeFailure(res: HttpResponse, secrets: Secrets): Promise<string> {
  return formatFailure(await readFailure(res), secrets);
}

/** A registry failure as `describeFailure` words it. */
export function formatFailure({ status, code, message }: RegistryFailure, secrets: Secrets): string {
  if (code === undefined) return `${status}`;
  const detail = secrets.foreign(oneLine(`${code}${message ? `: ${message}` : ''}`).slice(0, 300));
  return `${status} ${detail}`;
}

export interface RegistryFailure {
  status: number;
  code?: string;
  message?: string;
}

/** The status and the first error of a registry's error document (when it sent one). */
export async function readFailure(res: HttpResponse): Promise<RegistryFailure> {
  const text = await readText(res.body).catch(() => '');
  try {
    const doc = JSON.parse(text) as { errors?: Array<{ code?: unknown; message?: unknown }> };
    const first = doc.errors?.[0];
    if (first && typeof first.code === 'string') {
      return { status: res.status, code: first.code, ...(typeof first.message === 'string' && first.message && { message: first.message }) };
    }
  } catch {
    // Not a registry error document.
  }
  return { status: res.status };
}
