import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Agent } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { send } from '../../src/registry/transport.js';
import { isUserError } from '../../src/util/errors.js';

/**
 * Redirects by hand: the Authorization header stays on its origin, a body carrying a credential never
 * leaves its origin, and nothing goes over plain http unless allowed, whatever URL a server hands out.
 */

interface Seen {
  method: string;
  path: string;
  authorization?: string;
  body: string;
}

async function listen(handler: (req: IncomingMessage, body: string) => { status: number; location?: string }): Promise<{ server: Server; url: string; seen: Seen[] }> {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString();
      seen.push({ method: req.method!, path: req.url!, ...(req.headers.authorization && { authorization: req.headers.authorization }), body });
      const answer = handler(req, body);
      res.writeHead(answer.status, { 'content-length': '0', ...(answer.location && { location: answer.location }) });
      res.end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

describe('send', () => {
  const agent = new Agent();
  let elsewhere: Awaited<ReturnType<typeof listen>>;
  let origin: Awaited<ReturnType<typeof listen>>;

  beforeAll(async () => {
    elsewhere = await listen(() => ({ status: 200 }));
    origin = await listen((req) => {
      if (req.url === '/away') return { status: 307, location: `${elsewhere.url}/landed` };
      if (req.url === '/here') return { status: 307, location: '/landed' };
      if (req.url === '/ftp') return { status: 302, location: 'ftp://127.0.0.1/x' };
      return { status: 200 };
    });
  });
  afterAll(async () => {
    await agent.close();
    for (const s of [elsewhere, origin]) await new Promise((resolve) => s.server.close(resolve));
  });

  const error = (promise: Promise<unknown>) =>
    promise.then(
      () => null,
      (e: unknown) => e as Error,
    );

  it('keeps the connection after a HEAD: checking many blobs opens one connection, not one each', async () => {
    const own = new Agent({ connections: 1 });
    let connections = 0;
    const counting = () => void connections++;
    origin.server.on('connection', counting);
    try {
      for (let i = 0; i < 5; i++) {
        const res = await send(own, { method: 'HEAD', url: new URL(`${origin.url}/v2/r/blobs/sha256:${i}`), allowPlainHttp: true });
        await res.body.dump();
        expect(res.status).toBe(200);
      }
    } finally {
      origin.server.off('connection', counting);
      await own.close();
    }
    expect(connections).toBe(1);
  });

  it('does not send a credential body to another origin, but follows on its own origin', async () => {
    const before = elsewhere.seen.length;
    const form = () => Buffer.from('grant_type=refresh_token&refresh_token=Secret-Refresh-Token');
    const err = await error(send(agent, { method: 'POST', url: new URL(`${origin.url}/away`), body: form, credentialBody: true, allowPlainHttp: true }));
    expect(isUserError(err)).toBe(true);
    expect(err!.message).toBe(`${origin.url} redirected the login to ${elsewhere.url}, another origin: the credential it carries is not sent there`);
    expect(elsewhere.seen.slice(before)).toEqual([]);

    const res = await send(agent, { method: 'POST', url: new URL(`${origin.url}/here`), body: form, credentialBody: true, allowPlainHttp: true });
    await res.body.dump();
    expect(res.status).toBe(200);
    expect(origin.seen.at(-1)).toMatchObject({ method: 'POST', path: '/landed', body: form().toString() });
  });

  it('keeps the Authorization header on its origin', async () => {
    const res = await send(agent, { method: 'GET', url: new URL(`${origin.url}/away`), authorization: 'Bearer Secret-Token', allowPlainHttp: true });
    await res.body.dump();
    expect(res.status).toBe(200);
    expect(origin.seen.at(-1)!.authorization).toBe('Bearer Secret-Token');
    expect(elsewhere.seen.at(-1)).toEqual({ method: 'GET', path: '/landed', body: '' });
  });

  it('sends nothing over plain http unless allowed, and follows no other scheme at all', async () => {
    const before = origin.seen.length;
    const err = await error(send(agent, { method: 'PATCH', url: new URL(`${origin.url}/upload`), body: () => Buffer.from('blob bytes') }));
    expect(err!.message).toBe(`refusing to send PATCH to ${origin.url}: it is not https (plain http is allowed only with --tls-verify=false)`);
    expect(origin.seen.length).toBe(before);
    for (const url of ['file:///etc/passwd', 'ftp://127.0.0.1/x']) {
      const refused = await error(send(agent, { method: 'GET', url: new URL(url), allowPlainHttp: true }));
      expect(isUserError(refused), url).toBe(true);
    }
    const redirected = await error(send(agent, { method: 'GET', url: new URL(`${origin.url}/ftp`), allowPlainHttp: true }));
    expect(redirected!.message).toBe(`${origin.url} redirected to ftp://127.0.0.1, which is not https (allowed only with --tls-verify=false)`);
  });
});
