import { createServer as createHttpServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, request as httpsRequest } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';

/**
 * A reverse proxy in front of a real registry that logs every request and, when a rule says so,
 * misbehaves like a flaky network or a hostile registry: answers 500 or 429 itself, drops the
 * connection part-way through an upload (before or after bytes reach the registry), stalls (never
 * answers), echoes the credentials it received, hands out upload locations on other origins or on
 * plain http, changes the bytes it forwards, or answers with whatever a test makes up.
 * The Host header is passed through, so the registry's Location URLs point back at the proxy.
 */
export type Fault =
  | { kind: 'status'; status: number; retryAfter?: string; wwwAuthenticate?: string }
  /** Reads `afterBytes` of the request body, then resets the client; the registry sees nothing. */
  | { kind: 'drop-before-forward'; afterBytes: number }
  /** Forwards `afterBytes` of the body to the registry, then cuts both connections. */
  | { kind: 'drop-mid-forward'; afterBytes: number }
  /** Stops reading and never answers. */
  | { kind: 'stall' }
  /** Answers 307 to the same path on another origin (as registries send blob requests to storage hosts). */
  | { kind: 'redirect'; to: string }
  /**
   * Answers `status` with an error document (and headers) that echo the request's Authorization header
   * in every form a registry might: as sent, decoded, percent-encoded, in a header.
   */
  | { kind: 'echo'; status: number }
  /** Forwards to the registry, then points the answer's Location at `to` (an origin) with the same path and query. */
  | { kind: 'relocate'; to: string }
  /** Forwards to the registry with the request body's byte at `at` flipped (a proxy that damages data). */
  | { kind: 'corrupt'; at: number }
  /** Answers as given without asking the registry (a registry that lies). */
  | { kind: 'answer'; status: number; headers?: Record<string, string>; body?: string };

export interface ProxiedRequest {
  index: number;
  method: string;
  path: string;
  /** Status the client got (from the registry or the fault), when it got one. */
  status?: number;
  fault?: Fault['kind'];
  authorization?: string;
  contentRange?: string;
}

export type FaultRule = (request: { method: string; path: string; index: number; contentRange?: string }) => Fault | undefined;

export interface FaultProxy {
  url: string;
  host: string;
  requests: ProxiedRequest[];
  rule: FaultRule;
  /** Requests that carried blob bytes to the registry (PUT and PATCH), as the registry received them. */
  uploadsForwarded(): ProxiedRequest[];
  close(): Promise<void>;
}

export interface ProxyTarget {
  host: string;
  port: number;
  /** CA of a TLS registry; the proxy then also serves TLS with `serverTls`. */
  ca?: string;
  serverTls?: { cert: string; key: string };
  /** Sent to the registry in place of the client's Authorization (a storage host authorizes by other means). */
  injectAuthorization?: string;
}

export async function startFaultProxy(target: ProxyTarget): Promise<FaultProxy> {
  const requests: ProxiedRequest[] = [];
  const sockets = new Set<Socket>();
  const proxy: FaultProxy = {
    url: '',
    host: '',
    requests,
    rule: () => undefined,
    uploadsForwarded: () =>
      requests.filter((r) => (r.method === 'PUT' || r.method === 'PATCH') && r.path.includes('/blobs/uploads/') && r.fault === undefined),
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };

  const handle = (req: IncomingMessage, res: ServerResponse) => {
    const entry: ProxiedRequest = {
      index: requests.length,
      method: req.method ?? 'GET',
      path: req.url ?? '/',
      ...(req.headers.authorization && { authorization: req.headers.authorization }),
      ...(req.headers['content-range'] && { contentRange: String(req.headers['content-range']) }),
    };
    requests.push(entry);
    const fault = proxy.rule({ method: entry.method, path: entry.path, index: entry.index, contentRange: entry.contentRange });
    if (fault) entry.fault = fault.kind;

    if (fault?.kind === 'status') {
      req.resume();
      req.on('end', () => {
        entry.status = fault.status;
        const headers: Record<string, string> = { 'content-type': 'application/json' };
        if (fault.retryAfter) headers['retry-after'] = fault.retryAfter;
        if (fault.wwwAuthenticate) headers['www-authenticate'] = fault.wwwAuthenticate;
        res.writeHead(fault.status, headers);
        res.end(JSON.stringify({ errors: [{ code: 'UNKNOWN', message: 'injected by the fault proxy' }] }));
      });
      return;
    }
    if (fault?.kind === 'echo') {
      req.resume();
      req.on('end', () => {
        entry.status = fault.status;
        const sent = req.headers.authorization ?? '';
        const decoded = sent.startsWith('Basic ') ? Buffer.from(sent.slice(6), 'base64').toString('utf8') : sent;
        const message = `you sent ${sent} (${decoded}); as a query: ${encodeURIComponent(decoded)}; escaped: ${JSON.stringify(decoded)}; base64 again: ${Buffer.from(decoded).toString('base64')}; the password alone: ${decoded.slice(decoded.indexOf(':') + 1)}`;
        res.writeHead(fault.status, { 'content-type': 'application/json', 'x-echo': sent, 'www-authenticate': `Basic realm="${decoded.replace(/"/g, '')}"` });
        res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message, detail: { sent, decoded } }] }));
      });
      return;
    }
    if (fault?.kind === 'answer') {
      req.resume();
      req.on('end', () => {
        entry.status = fault.status;
        res.writeHead(fault.status, { 'content-length': String(Buffer.byteLength(fault.body ?? '')), ...fault.headers });
        res.end(fault.body ?? '');
      });
      return;
    }
    if (fault?.kind === 'redirect') {
      req.resume();
      req.on('end', () => {
        entry.status = 307;
        res.writeHead(307, { location: `${fault.to}${entry.path}`, 'content-length': '0' });
        res.end();
      });
      return;
    }
    if (fault?.kind === 'stall') {
      req.pause();
      return;
    }
    if (fault?.kind === 'drop-before-forward') {
      let seen = 0;
      req.on('data', (chunk: Buffer) => {
        seen += chunk.length;
        if (seen >= fault.afterBytes) req.socket.destroy();
      });
      req.on('end', () => req.socket.destroy());
      return;
    }

    const send = target.ca ? httpsRequest : httpRequest;
    const upstream = send(
      {
        host: target.host,
        port: target.port,
        method: req.method,
        path: req.url,
        headers: target.injectAuthorization ? { ...req.headers, authorization: target.injectAuthorization } : req.headers,
        ...(target.ca && { ca: target.ca, servername: 'localhost' }),
      },
      (answer) => {
        entry.status = answer.statusCode;
        const headers = { ...answer.headers };
        if (fault?.kind === 'relocate' && typeof headers.location === 'string') {
          const moved = new URL(headers.location, `http://${req.headers.host}`);
          headers.location = `${fault.to}${moved.pathname}${moved.search}`;
        }
        res.writeHead(answer.statusCode ?? 502, headers);
        answer.pipe(res);
      },
    );
    upstream.on('error', () => req.socket.destroy());
    if (fault?.kind === 'corrupt') {
      let seen = 0;
      req.on('data', (chunk: Buffer) => {
        const copy = Buffer.from(chunk);
        if (fault.at >= seen && fault.at < seen + copy.length) copy[fault.at - seen]! ^= 0xff;
        seen += copy.length;
        upstream.write(copy);
      });
      req.on('end', () => upstream.end());
      return;
    }
    if (fault?.kind === 'drop-mid-forward') {
      let forwarded = 0;
      req.on('data', (chunk: Buffer) => {
        const room = fault.afterBytes - forwarded;
        if (room <= 0) return;
        const piece = chunk.subarray(0, room);
        forwarded += piece.length;
        upstream.write(piece);
        if (forwarded >= fault.afterBytes) {
          // Give the registry a moment to write what it got, then cut both sides mid-request.
          setTimeout(() => {
            upstream.destroy();
            req.socket.destroy();
          }, 50);
        }
      });
      return;
    }
    req.pipe(upstream);
  };

  const server = target.serverTls ? createHttpsServer(target.serverTls, handle) : createHttpServer(handle);
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('secureConnection', (socket: Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  proxy.host = `127.0.0.1:${port}`;
  proxy.url = `${target.serverTls ? 'https' : 'http'}://${proxy.host}`;
  return proxy;
}
