import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { pushAndShow, type ShownPushOptions } from '../../src/cli/push-progress.js';
import { isUserError } from '../../src/util/errors.js';
import { startRegistry, type RunningRegistry } from '../helpers/registry.js';
import { tools } from '../helpers/tools.js';
import { capture } from './support/capture.js';
import { startFaultProxy, type FaultProxy } from './support/fault-proxy.js';
import { makePki, type TestPki } from './support/pki.js';
import { randomLayer, writeTestImage, type TestImage } from './support/test-image.js';

/**
 * A registry that misbehaves on purpose, between the push and a real TLS registry with Basic auth:
 * it echoes the credentials it got, hands out upload locations on other origins and on plain http,
 * damages what it forwards, lies in its answers, and fails its /v2/ probe. Whatever it does, a push
 * prints no secret, sends no credential or blob byte where it should not, and ends in one clear line.
 */

const CHUNK = 64 * 1024;

describe.runIf(tools('docker-registry', 'htpasswd'))('a hostile registry', () => {
  let pki: TestPki;
  let registry: RunningRegistry;
  let proxy: FaultProxy;
  let work: string;
  let certDir: string;
  let image: TestImage;
  let repoCount = 0;
  /** A long password, a short one and a one-character one, all valid logins. */
  const logins = { long: ['tester', 'L0ng-Secret-Passw0rd'], short: ['shorty', 'Zq'], tiny: ['tiny', 'Q'] } as const;

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'nix2oci-hostile-'));
    pki = makePki();
    certDir = join(work, 'certs.d');
    mkdirSync(certDir);
    writeFileSync(join(certDir, 'ca.crt'), pki.caCert);
    const htpasswd = Object.values(logins)
      .map(([user, password]) => execFileSync('htpasswd', ['-Bbn', user, password], { encoding: 'utf8' }).trim())
      .join('\n');
    registry = await startRegistry({ tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.caCert }, htpasswd: `${htpasswd}\n` });
    proxy = await startFaultProxy({ host: '127.0.0.1', port: registry.port, ca: pki.caCert, serverTls: { cert: pki.serverCert, key: pki.serverKey } });
    // One blob of three chunks (PATCH uploads) and one small blob (a single PUT).
    image = await writeTestImage(join(work, 'image'), { layers: [randomLayer('big', 2 * CHUNK + 500), randomLayer('small', 5000)] });
  });
  afterEach(() => {
    proxy.rule = () => undefined;
  });
  afterAll(async () => {
    await proxy?.close();
    await registry?.stop();
    rmSync(work, { recursive: true, force: true });
  });

  const freshRef = () => `${proxy.host}/hostile/repo${++repoCount}:latest`;
  const options = (login: keyof typeof logins, extra: ShownPushOptions = {}): ShownPushOptions => ({
    certDir,
    creds: logins[login].join(':'),
    stdout: null,
    progress: 'quiet',
    chunkSize: CHUNK,
    retryDelayMs: 10,
    env: { HOME: work },
    ...extra,
  });
  const failure = async (push: Promise<unknown>): Promise<Error> => {
    const err = await push.then(
      () => new Error('the push succeeded'),
      (e: unknown) => e as Error,
    );
    expect(isUserError(err), String(err)).toBe(true);
    expect(err.message).not.toContain('\n');
    return err;
  };

  describe('echoing the credentials it was sent', () => {
    it.each(Object.keys(logins) as (keyof typeof logins)[])('prints no form of a %s password, on any retry line or in the error', async (login) => {
      const [user, password] = logins[login];
      const header = Buffer.from(`${user}:${password}`).toString('base64');
      // Every upload request is answered with an echo; HEADs too, once, so the silent retries see it as well.
      let heads = 0;
      proxy.rule = ({ method, path }) =>
        (method === 'PUT' || method === 'PATCH') && path.includes('/blobs/uploads/')
          ? { kind: 'echo', status: 500 }
          : method === 'HEAD' && ++heads === 1
            ? { kind: 'echo', status: 503 }
            : undefined;
      const stderr = capture();
      const err = await failure(pushAndShow(image, freshRef(), options(login, { retries: 2, progress: 'plain', stderr: stderr.stream })));
      const printed = `${stderr.text()}\n${err.message}\n${err.stack}`;
      // The retries were printed, each naming what the registry said, or withholding it.
      expect(stderr.text().match(/retrying in/g)?.length).toBeGreaterThanOrEqual(2);
      expect(err.message).toMatch(/failed after 3 attempts: .*500 /);
      for (const form of [header, `${user}:${password}`, encodeURIComponent(`${user}:${password}`), Buffer.from(password).toString('base64').replace(/=+$/, '')]) {
        expect(printed).not.toContain(form);
      }
      if (password.length >= 4) {
        expect(printed).not.toContain(password);
        expect(err.message).toContain('***');
      } else {
        // Too short to cut out: what the registry said is withheld whole, our own words stay.
        expect(err.message).toContain('the rest of the message is withheld: it may hold a credential');
        expect(err.message).not.toMatch(/you sent/);
        expect(printed).not.toContain(`alone: ${password}`);
      }
    });
  });

  describe('handing out upload locations elsewhere', () => {
    it('refuses an upload location on plain http: no blob byte goes out in clear', async () => {
      const basic = `Basic ${Buffer.from(logins.long.join(':')).toString('base64')}`;
      const clear = await startFaultProxy({ host: '127.0.0.1', port: registry.port, ca: pki.caCert, injectAuthorization: basic });
      try {
        proxy.rule = ({ method, path }) => (method === 'POST' && path.includes('/blobs/uploads/') ? { kind: 'relocate', to: clear.url } : undefined);
        const ref = freshRef();
        const err = await failure(pushAndShow(image, ref, options('long')));
        expect(err.message).toMatch(
          new RegExp(`^${proxy.host}/hostile/repo\\d+ sent an upload location that is not https \\(${clear.url}\\) for blob sha256:[0-9a-f]{64}: its bytes are not sent in clear \\(allowed only with --tls-verify=false\\)$`),
        );
        expect(clear.requests).toEqual([]);
      } finally {
        await clear.close();
      }
    });

    it('follows an upload location on another https origin without sending it the Authorization header', async () => {
      const basic = `Basic ${Buffer.from(logins.long.join(':')).toString('base64')}`;
      // Stands for blob storage: it authorizes by its own means (here it adds the login itself).
      const storage = await startFaultProxy({ host: '127.0.0.1', port: registry.port, ca: pki.caCert, serverTls: { cert: pki.serverCert, key: pki.serverKey }, injectAuthorization: basic });
      try {
        proxy.rule = ({ method, path }) => (method === 'POST' && path.includes('/blobs/uploads/') ? { kind: 'relocate', to: storage.url } : undefined);
        const from = proxy.requests.length;
        const result = await pushAndShow(image, freshRef(), options('long'));
        expect(result.uploaded).toHaveLength(3);
        const writes = storage.requests.filter((r) => r.method === 'PATCH' || r.method === 'PUT');
        expect(writes.length).toBeGreaterThanOrEqual(3);
        expect(storage.requests.every((r) => r.authorization === undefined)).toBe(true);
        expect(proxy.requests.slice(from).filter((r) => r.method === 'PATCH' || (r.method === 'PUT' && r.path.includes('/blobs/')))).toEqual([]);
      } finally {
        await storage.close();
      }
    });

    it('reports an upload location that is no URL in one line', async () => {
      proxy.rule = ({ method, path }) =>
        method === 'POST' && path.includes('/blobs/uploads/') ? { kind: 'answer', status: 202, headers: { location: 'https://[::1/x' } } : undefined;
      const err = await failure(pushAndShow(image, freshRef(), options('long')));
      expect(err.message).toMatch(/ sent an invalid upload location "https:\/\/\[::1\/x" for blob sha256:[0-9a-f]{64}$/);
    });
  });

  describe('failing its /v2/ probe', () => {
    it('is retried like every request: 500s, a 429 and a reset on the first probes do not end the push', async () => {
      const answers: Array<'500' | '503' | 'reset' | '429'> = ['500', 'reset', '503', '429'];
      let probes = 0;
      proxy.rule = ({ method, path }) => {
        if (method !== 'GET' || path !== '/v2/') return undefined;
        const next = answers[probes++];
        if (next === undefined) return undefined;
        return next === 'reset' ? { kind: 'drop-before-forward', afterBytes: 0 } : { kind: 'status', status: Number(next), retryAfter: next === '429' ? '0' : undefined };
      };
      const result = await pushAndShow(image, freshRef(), options('long', { retries: 5 }));
      expect(result.uploaded).toHaveLength(3);
      expect(probes).toBeGreaterThanOrEqual(answers.length + 1);
    });

    it('fails in one line after --retries failures in a row, saying how often it failed', async () => {
      let probes = 0;
      proxy.rule = ({ method, path }) => (method === 'GET' && path === '/v2/' ? (probes++, { kind: 'status', status: 502 }) : undefined);
      const err = await failure(pushAndShow(image, freshRef(), options('long', { retries: 3 })));
      expect(err.message).toBe(`${proxy.url}/v2/ answered 502 4 times (--retries 3): the registry is failing`);
      expect(probes).toBe(4);
    });
  });

  describe('refusing bytes as not matching their digest', () => {
    it('is not retried when something on the way changed them, and says so', async () => {
      const small = image.layers[1]!.descriptor.digest;
      // The small blob goes up in one PUT; the proxy flips one of its bytes on the way.
      proxy.rule = ({ method, path }) => (method === 'PUT' && path.includes(encodeURIComponent(small)) ? { kind: 'corrupt', at: 100 } : undefined);
      const from = proxy.requests.length;
      const err = await failure(pushAndShow(image, freshRef(), options('long', { retries: 5 })));
      expect(err.message).toMatch(
        new RegExp(`^pushing blob ${small} to .*: the registry refused the bytes it received \\(400 DIGEST_INVALID: .*\\), although the blob matches its digest: they were changed on the way \\(a proxy\\?\\); not retried$`),
      );
      expect(proxy.requests.slice(from).filter((r) => r.method === 'PUT' && r.path.includes(encodeURIComponent(small)))).toHaveLength(1);
    });

    it('is not retried when the image’s own blob file was changed, and says so', async () => {
      const changed = await writeTestImage(join(work, 'changed'), { layers: [randomLayer('changed', 3000)] });
      const digest = changed.layers[0]!.descriptor.digest;
      const file = changed.blobFiles.get(digest)!;
      const bytes = readFileSync(file);
      bytes[bytes.length - 1]! ^= 0xff;
      writeFileSync(file, bytes);
      const from = proxy.requests.length;
      const err = await failure(pushAndShow(changed, freshRef(), options('long', { retries: 5 })));
      expect(err.message).toMatch(
        new RegExp(`^pushing blob ${digest} to .*: the image's blob does not match its digest \\(its ${bytes.length} bytes hash to sha256:[0-9a-f]{64}\\): the image is damaged or was changed after it was written; the registry refused it \\(400 DIGEST_INVALID`),
      );
      expect(proxy.requests.slice(from).filter((r) => r.method === 'PUT' && r.path.includes(encodeURIComponent(digest)))).toHaveLength(1);
    });
  });

  describe('lying in its answers', () => {
    it('a wrong stored digest (here, the credentials it got) fails the push without echoing what it said', async () => {
      const small = image.layers[1]!.descriptor.digest;
      const basic = `Basic ${Buffer.from(logins.long.join(':')).toString('base64')}`;
      proxy.rule = ({ method, path }) =>
        method === 'PUT' && path.includes(encodeURIComponent(small)) ? { kind: 'answer', status: 201, headers: { 'docker-content-digest': basic } } : undefined;
      const err = await failure(pushAndShow(image, freshRef(), options('long')));
      expect(err.message).toMatch(new RegExp(`stored blob ${small} as something that is not a sha256 digest: the blob file does not match its digest$`));
    });

    it('an upload range it never got is retried from what it really holds', async () => {
      let lied = false;
      proxy.rule = ({ method }) => {
        if (method !== 'PATCH' || lied) return undefined;
        lied = true;
        return { kind: 'answer', status: 202, headers: { range: '0-999999999', location: '/v2/nowhere/blobs/uploads/lost' } };
      };
      const result = await pushAndShow(image, freshRef(), options('long'));
      expect(lied).toBe(true);
      expect(result.uploaded).toHaveLength(3);
    });
  });
});

