import { createRequire } from 'node:module';
import type { Readable } from 'node:stream';
import type { Agent, Dispatcher } from 'undici';
import type { TlsConnectOptions } from './tls.js';
import { UserError } from '../util/errors.js';
import { errorCode } from './retry.js';
import { oneLine, type Secrets } from './secrets.js';

/**
 * HTTP for a push: one undici Agent with keep-alive connections to every origin (registry, token
 * server, blob storage), and redirects followed by hand so that the Authorization header only ever
 * goes to the origin it was issued for (registries redirect blob reads to storage hosts).
 *
 * Every request, whatever its URL came from (the registry's address, a redirect, an upload Location
 * the registry handed out), goes over https unless plain http was allowed (--tls-verify=false): no
 * blob byte or credential is sent in clear because a server said so. A body that carries a credential
 * (an OAuth2 refresh token) never follows a redirect to another origin.
 */
export interface TransportOptions {
  tls: TlsConnectOptions;
  /** Connections per origin: the number of blobs in flight, plus room for HEADs and the token server. */
  connections: number;
  /** No progress for this long (no response headers, no body bytes, an upload that does not drain) aborts a request. */
  stallTimeoutMs: number;
}

/**
 * undici's Agent and the request API it gets from undici's entry point, loaded when the first agent
 * is made. The entry point loads all of undici (fetch, WebSocket, caches, mocks): 70 ms of start-up
 * on every run, on the path of a fresh CI runner's build, for three modules used. The entry point
 * adds the API to the Dispatcher prototype in the same way (undici has no exports map, and the
 * lockfile pins the version these paths are from).
 */
let agentClass: typeof Agent | null = null;
function loadAgent(): typeof Agent {
  if (agentClass) return agentClass;
  const require = createRequire(import.meta.url);
  const dispatcher = require('undici/lib/dispatcher/dispatcher.js') as { prototype: object };
  const api = require('undici/lib/api/index.js') as object;
  if (!('request' in dispatcher.prototype)) Object.assign(dispatcher.prototype, api);
  agentClass = require('undici/lib/dispatcher/agent.js') as typeof Agent;
  return agentClass;
}

export function createAgent(options: TransportOptions): Agent {
  const Agent = loadAgent();
  return new Agent({
    connections: options.connections,
    keepAliveTimeout: 30_000,
    keepAliveMaxTimeout: 120_000,
    // undici fires the headers timeout when a request body stops draining, so it also catches stalled uploads.
    headersTimeout: options.stallTimeoutMs,
    bodyTimeout: options.stallTimeoutMs,
    connect: { ...options.tls, timeout: Math.min(options.stallTimeoutMs, 30_000) },
  });
}

export type HttpMethod = 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

export interface HttpRequest {
  method: HttpMethod;
  url: URL;
  headers?: Record<string, string>;
  /** Makes a fresh body for each attempt and each redirect hop. */
  body?: () => Buffer | Readable;
  /** Sent only while the request stays on `authorizationOrigin`. */
  authorization?: string;
  /** Defaults to the request URL's origin. */
  authorizationOrigin?: string;
  /** Whether the request (or a redirect) may go over plain http (only with --tls-verify=false). */
  allowPlainHttp?: boolean;
  /** The body holds a credential: it is sent only to the request URL's own origin. */
  credentialBody?: boolean;
  /** Scrubs what the server sent (a Location) before it goes into a message. */
  secrets?: Secrets;
  signal?: AbortSignal;
}

export interface HttpResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Dispatcher.ResponseData['body'];
  /** Where the response came from, after redirects. */
  url: URL;
  /** Whether the request that got this response carried the Authorization header. */
  authorized: boolean;
}

const MAX_REDIRECTS = 5;
const REDIRECTS = new Set([301, 302, 303, 307, 308]);

export async function send(agent: Dispatcher, request: HttpRequest): Promise<HttpResponse> {
  const authorizationOrigin = request.authorizationOrigin ?? request.url.origin;
  let { method, url } = request;
  let body = request.body;
  const shown = (u: URL | string) => {
    const text = oneLine(typeof u === 'string' ? u : u.origin).slice(0, 200);
    return request.secrets ? request.secrets.foreign(text) : text;
  };
  if (!allowedProtocol(url, request.allowPlainHttp)) {
    throw new UserError(`refusing to send ${method} to ${shown(url)}: it is not https (plain http is allowed only with --tls-verify=false)`);
  }
  for (let hop = 0; ; hop++) {
    const headers: Record<string, string> = { ...request.headers };
    const authorized = request.authorization !== undefined && url.origin === authorizationOrigin;
    if (authorized) headers.authorization = request.authorization!;
    if (!body) delete headers['content-length'];
    const payload = body?.() ?? null;
    let res: Dispatcher.ResponseData;
    try {
      res = await agent.request({
        origin: url.origin,
        path: url.pathname + url.search,
        method,
        headers,
        body: payload,
        signal: request.signal,
        // undici closes the connection after a HEAD (in case a server sends a body anyway): a build
        // checking a hundred blobs would open a hundred connections (TLS handshakes on a real
        // registry). Registries answer HEAD as HTTP says, as Go's client (skopeo, containerd) expects.
        ...(method === 'HEAD' && { reset: false }),
      });
    } finally {
      // A body the server did not read to the end (an error, an early answer) must still close its file.
      discard(payload);
    }
    const location = firstHeader(res.headers, 'location');
    if (!REDIRECTS.has(res.statusCode) || !location) {
      return { status: res.statusCode, headers: res.headers, body: res.body, url, authorized };
    }
    await res.body.dump();
    if (hop >= MAX_REDIRECTS) throw new UserError(`${request.url.origin} redirected ${request.method} ${request.url.pathname} more than ${MAX_REDIRECTS} times`);
    const from = url;
    try {
      url = new URL(location, url);
    } catch {
      throw new UserError(`${request.url.origin} redirected ${request.method} ${request.url.pathname} to an invalid location "${shown(location)}"`);
    }
    if (!allowedProtocol(url, request.allowPlainHttp)) {
      throw new UserError(`${request.url.origin} redirected to ${shown(url)}, which is not https (allowed only with --tls-verify=false)`);
    }
    const keepsBody = !(res.statusCode === 303 || ((res.statusCode === 301 || res.statusCode === 302) && method === 'POST'));
    if (request.credentialBody && body && keepsBody && url.origin !== from.origin) {
      throw new UserError(`${from.origin} redirected the login to ${shown(url)}, another origin: the credential it carries is not sent there`);
    }
    // 303 (and, as browsers do, 301/302 after a POST) turn the request into a GET without a body.
    if (res.statusCode === 303 || ((res.statusCode === 301 || res.statusCode === 302) && method === 'POST')) {
      method = 'GET';
      body = undefined;
    }
  }
}

/** https always; plain http only when allowed; nothing else (file:, data:, ftp: …) ever. */
function allowedProtocol(url: URL, allowPlainHttp: boolean | undefined): boolean {
  return url.protocol === 'https:' || (url.protocol === 'http:' && allowPlainHttp === true);
}

function discard(payload: Buffer | Readable | null): void {
  if (payload && !Buffer.isBuffer(payload) && !payload.readableEnded) payload.destroy();
}

export function firstHeader(headers: HttpResponse['headers'], name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** Reads at most `limit` bytes of a response body (error documents, tokens) and discards the rest. */
export async function readText(body: HttpResponse['body'], limit = 64 << 10): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    if (size < limit) chunks.push(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return Buffer.concat(chunks).subarray(0, limit).toString('utf8');
}

const UNKNOWN_CA = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_UNTRUSTED',
]);

/** undici's socket errors say how much was read: nothing at all hints at a refused TLS handshake. */
function closedBeforeAnswering(err: unknown): boolean {
  const socket = (err as { socket?: { bytesRead?: unknown } }).socket;
  return typeof socket?.bytesRead === 'number' && socket.bytesRead === 0;
}

/** True for failures that mean "this port does not speak TLS", so plain HTTP is worth a try. */
export function isTlsProtocolError(err: unknown): boolean {
  const code = errorCode(err);
  const message = err instanceof Error ? `${err.message} ${(err.cause as Error | undefined)?.message ?? ''}` : '';
  return code === 'EPROTO' || code === 'ERR_SSL_WRONG_VERSION_NUMBER' || /wrong version number|packet length too long/i.test(message);
}

/** One line saying what went wrong with a connection to `host`, and what to do about it. */
export function describeNetworkError(err: unknown, host: string): string {
  const code = errorCode(err);
  if (code && UNKNOWN_CA.has(code)) {
    return `TLS: the certificate of ${host} is signed by an unknown authority (${code}); put the CA in --cert-dir DIR as ca.crt, or use --tls-verify=false`;
  }
  if (code === 'CERT_HAS_EXPIRED') return `TLS: the certificate of ${host} has expired`;
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return `TLS: the certificate of ${host} is not valid for that name`;
  if (isTlsProtocolError(err)) return `TLS handshake with ${host} failed: it does not speak TLS (use --tls-verify=false to allow plain HTTP)`;
  if (code?.startsWith('ERR_SSL_') && /ALERT_(BAD_CERTIFICATE|CERTIFICATE_REQUIRED|HANDSHAKE_FAILURE)/.test(code)) {
    return `TLS handshake with ${host} failed (${code}): does it require a client certificate? Put client.cert and client.key in --cert-dir`;
  }
  switch (code) {
    case 'ECONNREFUSED':
      return `cannot connect to ${host}: connection refused (is the registry running?)`;
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return `cannot resolve ${host}`;
    case 'ECONNRESET':
    case 'EPIPE':
    case 'UND_ERR_SOCKET':
    case 'UND_ERR_CLOSED':
      if (closedBeforeAnswering(err)) {
        return `${host} closed the connection before answering (if it requires a client certificate, put client.cert and client.key in --cert-dir)`;
      }
      return `the connection to ${host} was closed unexpectedly`;
    case 'UND_ERR_CONNECT_TIMEOUT':
    case 'ETIMEDOUT':
      return `connecting to ${host} timed out`;
    case 'UND_ERR_HEADERS_TIMEOUT':
    case 'UND_ERR_BODY_TIMEOUT':
      return `${host} stopped responding (stalled)`;
    default: {
      const message = err instanceof Error ? err.message.split('\n')[0] : String(err);
      return `request to ${host} failed: ${code ?? message}`;
    }
  }
}
