import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import forge from 'node-forge';
import { certificateDerBase64, type TestPki } from './pki.js';

/**
 * A Docker token server (https://distribution.github.io/distribution/spec/auth/token/) in the test
 * process: GET /token with Basic auth returns an RS256 JWT signed with node-forge, whose `x5c`
 * carries the signing certificate the registry trusts (its `auth.token.rootcertbundle`).
 * POST /token takes an OAuth2 refresh token instead (docker's identity tokens).
 * Valid users get every action they ask for; anonymous callers get nothing.
 */
export interface TokenServer {
  realm: string;
  service: string;
  issuer: string;
  /** Every token request: who asked, and for which scopes. */
  requests: Array<{ account: string | undefined; scopes: string[]; granted: boolean }>;
  /** Every token handed out. */
  issued: string[];
  close(): Promise<void>;
}

export async function startTokenServer(
  pki: TestPki,
  users: Record<string, string>,
  /** Identity (refresh) tokens and the user each stands for. */
  refreshTokens: Record<string, string> = {},
): Promise<TokenServer> {
  const serviceName = 'nix2oci-test-registry';
  const issuer = 'nix2oci-test-token-issuer';
  const requests: TokenServer['requests'] = [];
  const issued: string[] = [];
  const x5c = [certificateDerBase64(pki.tokenCert)];

  const server: Server = createServer({ cert: pki.serverCert, key: pki.serverKey }, async (req, res) => {
    const url = new URL(req.url ?? '/', 'https://token.invalid');
    let scopes = url.searchParams.getAll('scope');
    let account = basicUser(req.headers.authorization, users);
    let service = url.searchParams.get('service');
    if (req.method === 'POST') {
      // OAuth2 refresh-token grant (docker's identity tokens): the form carries token, service and scopes.
      const chunks: Buffer[] = [];
      for await (const chunk of req) chunks.push(chunk as Buffer);
      const form = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
      const refresh = form.get('refresh_token') ?? '';
      account = form.get('grant_type') === 'refresh_token' && Object.hasOwn(refreshTokens, refresh) ? refreshTokens[refresh] : undefined;
      scopes = (form.get('scope') ?? '').split(' ').filter(Boolean);
      service = form.get('service');
    }
    const granted = account !== undefined;
    requests.push({ account: account ?? url.searchParams.get('account') ?? undefined, scopes, granted });
    if (url.pathname !== '/token' || !granted) {
      res.writeHead(401, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'wrong user or password' }] }));
      return;
    }
    const now = Math.floor(Date.now() / 1000);
    const claims = {
      iss: issuer,
      sub: account,
      aud: service ?? serviceName,
      exp: now + 300,
      nbf: now - 5,
      iat: now,
      jti: randomBytes(8).toString('hex'),
      access: scopes.map(parseScope).filter((s) => s !== undefined),
    };
    const token = signJwt({ typ: 'JWT', alg: 'RS256', x5c }, claims, pki.tokenKey);
    issued.push(token);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token, access_token: token, expires_in: 300, issued_at: new Date(now * 1000).toISOString() }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    realm: `https://127.0.0.1:${port}/token`,
    service: serviceName,
    issuer,
    requests,
    issued,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

function basicUser(header: string | undefined, users: Record<string, string>): string | undefined {
  const match = /^Basic (.+)$/.exec(header ?? '');
  if (!match) return undefined;
  const decoded = Buffer.from(match[1]!, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  const user = decoded.slice(0, colon);
  return colon > 0 && Object.hasOwn(users, user) && users[user] === decoded.slice(colon + 1) ? user : undefined;
}

/** `repository:team/app:pull,push` → `{type, name, actions}`. */
function parseScope(scope: string): { type: string; name: string; actions: string[] } | undefined {
  const first = scope.indexOf(':');
  const last = scope.lastIndexOf(':');
  if (first < 0 || last <= first) return undefined;
  return { type: scope.slice(0, first), name: scope.slice(first + 1, last), actions: scope.slice(last + 1).split(',') };
}

function base64url(data: string | Buffer): string {
  return Buffer.from(data).toString('base64url');
}

function signJwt(header: object, claims: object, key: forge.pki.rsa.PrivateKey): string {
  const signingInput = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(claims))}`;
  const md = forge.md.sha256.create();
  md.update(signingInput, 'utf8');
  const signature = Buffer.from(key.sign(md), 'binary');
  return `${signingInput}.${base64url(signature)}`;
}
