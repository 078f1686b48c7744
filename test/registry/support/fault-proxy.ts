import { createServer as createHttpServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, request as httpsRequest } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';

/**
 * A reverse proxy in front of a real registry that logs every request and, when a rule says so,
 * misbehaves like a flaky network: answers 500 or 429 itself, drops the connection part-way
 * through an upload (before or after bytes reach the registry), or stalls (never answers).
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
  | { kind: 'redirect'; to: string };

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
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    upstream.on('error', () => req.socket.destroy());
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
