import type { Dispatcher } from 'undici';
import { UserError } from '../util/errors.js';
import { parseChallenges, type AuthChallenge } from './challenge.js';
import type { Credentials } from './credentials.js';
import { isRetriableError, isRetriableStatus, parseRetryAfter, retryDelay, sleep, type RetryPolicy } from './retry.js';
import { describeNetworkError, firstHeader, readText, send } from './transport.js';
import { oneLine, type Secrets } from './secrets.js';

/**
 * The Authorization header for a registry, from its `WWW-Authenticate` challenge: nothing
 * (anonymous), Basic with the user's credentials, or a Bearer token from the challenge's realm
 * for the push's scopes (the target repository's pull+push, each mount source's pull).
 * Tokens are cached and fetched again when the registry rejects one in the middle of a push.
 */
export interface AuthOptions {
  registry: string;
  credentials?: Credentials;
  /** e.g. `repository:team/app:pull,push`, `repository:team/base:pull`. */
  scopes: string[];
  agent: Dispatcher;
  retry: RetryPolicy;
  /** Registers each issued token so it can be scrubbed from output, and scrubs what the registry sends back. */
  secrets: Secrets;
  /** Whether a token realm may be plain http (only with --tls-verify=false). */
  allowHttp: boolean;
  signal?: AbortSignal;
}

interface Token {
  value: string;
  /** ms since epoch after which the token is renewed before use. */
  renewAt: number;
  /** The scopes it was issued for (their count: scopes are only ever added). */
  scopeCount: number;
}

/** Docker's token spec: a token without expires_in lasts 60 seconds. */
const DEFAULT_TOKEN_SECONDS = 60;

export class RegistryAuth {
  private challenge: AuthChallenge | undefined;
  private readonly scopes: Set<string>;
  private token: Token | undefined;
  private pending: Promise<Token> | undefined;

  constructor(private readonly options: AuthOptions) {
    this.scopes = new Set(options.scopes);
  }

  /** Which scheme the registry asked for, after a ping: 'none', 'basic' or 'bearer'. */
  get scheme(): 'none' | 'basic' | 'bearer' {
    return (this.challenge?.scheme as 'basic' | 'bearer' | undefined) ?? 'none';
  }

  /** Records the registry's challenge from a 401; returns false when no supported scheme is offered. */
  useChallenge(header: string | undefined): boolean {
    const challenges = parseChallenges(header ?? '');
    const chosen = challenges.find((c) => c.scheme === 'bearer') ?? challenges.find((c) => c.scheme === 'basic');
    if (!chosen) return false;
    if (chosen.scheme === 'bearer') {
      if (!chosen.params.realm) return false;
      // A registry may ask for a scope the push did not foresee: later tokens include it.
      for (const scope of (chosen.params.scope ?? '').split(' ')) if (scope) this.scopes.add(scope);
    }
    this.challenge = chosen;
    return true;
  }

  /** The header value for the next request to the registry, fetching a token when needed. */
  async authorization(): Promise<string | undefined> {
    switch (this.scheme) {
      case 'none':
        return undefined;
      case 'basic':
        return this.basicHeader();
      case 'bearer': {
        const token = this.token && this.usable(this.token) ? this.token : await this.renewToken(this.token);
        return `Bearer ${token.value}`;
      }
    }
  }

  /**
   * After a 401 to a request that carried `rejected`: takes the new challenge into account and
   * renews the token. Returns false when nothing would change (Basic credentials were refused),
   * so the caller reports the 401 instead of looping.
   */
  async renew(challengeHeader: string | undefined, rejected: string | undefined): Promise<boolean> {
    const before = this.scheme;
    if (!this.useChallenge(challengeHeader)) return false;
    if (this.scheme === 'basic') return before !== 'basic' || rejected === undefined;
    if (rejected === undefined || !this.token || rejected !== `Bearer ${this.token.value}`) {
      // Another request already renewed it (or none was sent): use the current one.
      if (before !== 'bearer') this.token = undefined;
      return true;
    }
    await this.renewToken(this.token);
    return true;
  }

  /** Not about to expire, and issued for every scope asked for so far. */
  private usable(token: Token): boolean {
    return Date.now() < token.renewAt && token.scopeCount === this.scopes.size;
  }

  /** Describes who is authenticating, for error messages (never the secret). */
  describeIdentity(): string {
    const creds = this.options.credentials;
    if (!creds) return 'anonymous access';
    return creds.kind === 'basic'
      ? `the credentials of user "${creds.username}" (from ${creds.source})`
      : `the identity token from ${creds.source}`;
  }

  private basicHeader(): string {
    const creds = this.options.credentials;
    if (!creds) {
      throw new UserError(
        `${this.options.registry} requires a login: pass --creds USER:PASSWORD or --authfile, or run podman login / docker login`,
      );
    }
    if (creds.kind !== 'basic') {
      throw new UserError(`${this.options.registry} asks for a password, but ${creds.source} holds an identity token`);
    }
    return `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}`;
  }

  /** Fetches a token, once for all requests that need it at the same time. */
  private renewToken(stale: Token | undefined): Promise<Token> {
    if (this.pending) return this.pending;
    if (this.token && this.token !== stale && this.usable(this.token)) return Promise.resolve(this.token);
    this.pending = this.fetchToken()
      .then((token) => {
        this.token = token;
        return token;
      })
      .finally(() => {
        this.pending = undefined;
      });
    return this.pending;
  }

  private async fetchToken(): Promise<Token> {
    const { registry, credentials, retry, signal } = this.options;
    const params = this.challenge!.params;
    let realm: URL;
    try {
      realm = new URL(params.realm!);
    } catch {
      throw new UserError(`${registry} named an invalid token realm "${this.options.secrets.foreign(oneLine(params.realm ?? '').slice(0, 200))}"`);
    }
    if (realm.protocol !== 'https:' && !(realm.protocol === 'http:' && this.options.allowHttp)) {
      throw new UserError(`${registry} sends logins to ${realm.origin}, which is not https (allowed only with --tls-verify=false)`);
    }
    const scopes = [...this.scopes].sort();
    const request = tokenRequest(realm, params.service, scopes, credentials);
    const scopeCount = scopes.length;

    for (let failures = 0; ; ) {
      let status: number;
      let text: string;
      let retryAfter: string | undefined;
      try {
        const res = await send(this.options.agent, { ...request, allowPlainHttp: this.options.allowHttp, secrets: this.options.secrets, signal });
        status = res.status;
        retryAfter = firstHeader(res.headers, 'retry-after');
        text = await readText(res.body, 1 << 20);
      } catch (err) {
        if (signal?.aborted) throw err;
        if (++failures <= retry.attempts && isRetriableError(err, { refusedIsRetriable: failures > 1 })) {
          await sleep(retryDelay(retry, failures), signal);
          continue;
        }
        throw new UserError(`token server for ${registry}: ${describeNetworkError(err, realm.host)}`, { cause: err });
      }
      if (status === 200) return { ...this.parseToken(text, realm), scopeCount };
      if (status === 401 || status === 403) {
        throw new UserError(`login to ${registry} failed: the token server ${realm.origin} refused ${this.describeIdentity()} (${status})`);
      }
      if (isRetriableStatus(status) && ++failures <= retry.attempts) {
        await sleep(retryDelay(retry, failures, parseRetryAfter(retryAfter)), signal);
        continue;
      }
      throw new UserError(`login to ${registry} failed: the token server ${realm.origin} answered ${status}`);
    }
  }

  private parseToken(text: string, realm: URL): Omit<Token, 'scopeCount'> {
    let reply: { token?: unknown; access_token?: unknown; expires_in?: unknown; issued_at?: unknown };
    try {
      reply = JSON.parse(text) as typeof reply;
    } catch {
      throw new UserError(`the token server ${realm.origin} sent something other than JSON`);
    }
    const value = typeof reply.token === 'string' && reply.token ? reply.token : reply.access_token;
    if (typeof value !== 'string' || value === '') throw new UserError(`the token server ${realm.origin} sent no token`);
    this.options.secrets.add(value);
    const seconds = typeof reply.expires_in === 'number' && reply.expires_in > 0 ? reply.expires_in : DEFAULT_TOKEN_SECONDS;
    const issued = typeof reply.issued_at === 'string' ? Date.parse(reply.issued_at) : NaN;
    // Our clock, not the server's issued_at, decides: clocks differ. Renew with a tenth of the lifetime to spare.
    const start = Number.isNaN(issued) ? Date.now() : Math.min(Date.now(), issued + 5_000);
    return { value, renewAt: start + seconds * 900 };
  }
}

/**
 * Docker's token protocol: GET with Basic credentials (or none for anonymous), or the OAuth2
 * refresh-token POST when the credentials are an identity token.
 */
function tokenRequest(realm: URL, service: string | undefined, scopes: string[], credentials: Credentials | undefined) {
  if (credentials?.kind === 'identity-token') {
    const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: credentials.token, client_id: 'nix2oci' });
    if (service) form.set('service', service);
    if (scopes.length) form.set('scope', scopes.join(' '));
    const body = Buffer.from(form.toString());
    return {
      method: 'POST' as const,
      url: realm,
      headers: { 'content-type': 'application/x-www-form-urlencoded', 'content-length': String(body.length) },
      body: () => body,
      credentialBody: true,
    };
  }
  const url = new URL(realm);
  if (service) url.searchParams.set('service', service);
  for (const scope of scopes) url.searchParams.append('scope', scope);
  if (credentials) url.searchParams.set('account', credentials.username);
  const authorization = credentials
    ? `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')}`
    : undefined;
  return { method: 'GET' as const, url, authorization };
}
