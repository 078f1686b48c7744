import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, openSync, closeSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { request as httpsRequest } from 'node:https';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Starts Debian's `docker-registry` (distribution 2.8) on 127.0.0.1 with a free port, in a temp
 * directory, in one of the set-ups the tests need: plain HTTP; TLS (+ htpasswd Basic auth);
 * token auth. Waits until it answers; `stop()` ends it and removes its storage.
 */
export interface RegistrySetup {
  /** PEM server certificate and key: serve TLS. `clientCa`: require client certificates it signed. */
  tls?: { cert: string; key: string; ca: string; clientCa?: string };
  /** Contents of an htpasswd file (bcrypt entries): Basic auth. */
  htpasswd?: string;
  /** Token auth: the token server's realm, the service and issuer names, and the PEM certificate that signs tokens. */
  token?: { realm: string; service: string; issuer: string; signingCert: string };
}

export interface RunningRegistry {
  /** `127.0.0.1:<port>` */
  host: string;
  port: number;
  /** Origin URL: `http(s)://127.0.0.1:<port>`. */
  url: string;
  dir: string;
  /** The registry's log so far (for failing assertions). */
  log(): string;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export async function startRegistry(setup: RegistrySetup = {}): Promise<RunningRegistry> {
  const dir = mkdtempSync(join(tmpdir(), 'nix2oci-registry-'));
  const port = await freePort();
  const lines = [
    'version: 0.1',
    'log:',
    '  level: info',
    '  accesslog:',
    '    disabled: false',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${join(dir, 'data')}`,
    '  delete:',
    '    enabled: true',
    'http:',
    `  addr: 127.0.0.1:${port}`,
    '  secret: nix2oci-test-secret',
  ];
  if (setup.tls) {
    writeFileSync(join(dir, 'server.crt'), setup.tls.cert);
    writeFileSync(join(dir, 'server.key'), setup.tls.key);
    lines.push('  tls:', `    certificate: ${join(dir, 'server.crt')}`, `    key: ${join(dir, 'server.key')}`);
    if (setup.tls.clientCa) {
      writeFileSync(join(dir, 'client-ca.crt'), setup.tls.clientCa);
      lines.push('    clientcas:', `      - ${join(dir, 'client-ca.crt')}`);
    }
  }
  if (setup.htpasswd) {
    writeFileSync(join(dir, 'htpasswd'), setup.htpasswd);
    lines.push('auth:', '  htpasswd:', '    realm: nix2oci-test', `    path: ${join(dir, 'htpasswd')}`);
  } else if (setup.token) {
    writeFileSync(join(dir, 'token-signer.crt'), setup.token.signingCert);
    lines.push(
      'auth:',
      '  token:',
      `    realm: ${setup.token.realm}`,
      `    service: ${setup.token.service}`,
      `    issuer: ${setup.token.issuer}`,
      `    rootcertbundle: ${join(dir, 'token-signer.crt')}`,
    );
  }
  writeFileSync(join(dir, 'config.yml'), `${lines.join('\n')}\n`);

  const logFile = join(dir, 'registry.log');
  const logFd = openSync(logFile, 'w');
  const child: ChildProcess = spawn('docker-registry', ['serve', join(dir, 'config.yml')], {
    cwd: dir,
    stdio: ['ignore', logFd, logFd],
  });
  closeSync(logFd);
  const log = () => readFileSync(logFile, 'utf8');
  let exited = false;
  child.on('exit', () => {
    exited = true;
  });

  const url = `${setup.tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (exited) throw new Error(`docker-registry exited at start:\n${log()}`);
    if (await answers(url, setup.tls?.ca)) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`docker-registry did not answer on ${url}:\n${log()}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }

  return {
    host: `127.0.0.1:${port}`,
    port,
    url,
    dir,
    log,
    async stop() {
      if (!exited) {
        const gone = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
        await gone;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** True once GET /v2/ gets any HTTP answer (or a TLS refusal, from a registry that wants a client certificate). */
function answers(url: string, ca: string | undefined): Promise<boolean> {
  return new Promise((resolve) => {
    const get = url.startsWith('https') ? httpsRequest : httpRequest;
    const req = get(`${url}/v2/`, { method: 'GET', ca, timeout: 1_000 }, (res) => {
      res.resume();
      resolve(true);
    });
    req.on('error', (err: NodeJS.ErrnoException) => resolve(err.code !== 'ECONNREFUSED' && err.code !== 'ECONNRESET' && url.startsWith('https')));
    req.on('timeout', () => req.destroy());
    req.end();
  });
}
