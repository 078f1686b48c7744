import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pushAndShow, type ShownPushOptions } from '../../src/cli/push-progress.js';
import { isUserError } from '../../src/util/errors.js';
import { startRegistry, type RunningRegistry } from '../helpers/registry.js';
import { tools } from '../helpers/tools.js';
import { isolatedEnv, placeCredentials, type CredentialSource } from './support/credentials-fixtures.js';
import { makePki, type TestPki } from './support/pki.js';
import { busyboxLayer, randomLayer, writeTestImage, type TestImage } from './support/test-image.js';
import { podmanPullAndRun, skopeoCopyBack, skopeoInspect } from './support/verify.js';
import { capture } from './support/capture.js';
import { buildDemoImage, DEMO_OUTPUT } from './support/demo-image.js';
import { startFaultProxy } from './support/fault-proxy.js';

const USER = 'pusher';
const PASSWORD = 'S3cret-pa55word-for-tests';

/** TLS with a CA made in the test, htpasswd (bcrypt) Basic auth, and every place credentials come from. */
describe.runIf(tools('docker-registry', 'htpasswd', 'skopeo', 'podman'))('push to a TLS registry with Basic auth', () => {
  let pki: TestPki;
  let registry: RunningRegistry;
  let work: string;
  let certDir: string;
  let image: TestImage;
  let home: string;

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'nix2oci-tls-basic-'));
    pki = makePki();
    certDir = join(work, 'certs.d');
    mkdirSync(certDir);
    writeFileSync(join(certDir, 'ca.crt'), pki.caCert);
    const htpasswd = execFileSync('htpasswd', ['-Bbn', USER, PASSWORD], { encoding: 'utf8' });
    registry = await startRegistry({ tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.caCert }, htpasswd });
    image = await writeTestImage(join(work, 'image'), { layers: [busyboxLayer(), randomLayer('tls', 100_000)] });
    home = mkdtempSync(join(tmpdir(), 'nix2oci-home-'));
  });
  afterAll(async () => {
    await registry?.stop();
    rmSync(work, { recursive: true, force: true });
    rmSync(home, { recursive: true, force: true });
  });

  /** Options with no credential source but those a test adds. */
  const options = (extra: ShownPushOptions = {}): ShownPushOptions => ({ certDir, stdout: null, progress: 'quiet', env: isolatedEnv(home), ...extra });
  const access = () => ({ tlsVerify: true, certDir, creds: `${USER}:${PASSWORD}` });

  it('pushes the demo image with --creds and --cert-dir; skopeo and podman read it back', async () => {
    const err = capture();
    const out = capture();
    const demo = await buildDemoImage(work);
    const result = await pushAndShow(demo, `${registry.host}/secure/app:1.0`, options({
      creds: `${USER}:${PASSWORD}`,
      progress: 'plain',
      stderr: err.stream,
      stdout: out.stream,
    }));
    expect((await skopeoInspect(`${registry.host}/secure/app:1.0`, access())).Digest).toBe(result.digest);
    const back = await skopeoCopyBack(`${registry.host}/secure/app:1.0`, access());
    expect(back.manifestDigest).toBe(result.digest);
    expect(back.blobs).toEqual([...demo.layers.map((l) => l.descriptor.digest), demo.configDescriptor.digest].sort());
    expect(await podmanPullAndRun(`${registry.host}/secure/app:1.0`, access())).toBe(DEMO_OUTPUT);
    for (const text of [err.text(), out.text()]) {
      expect(text).not.toContain(PASSWORD);
      expect(text).not.toContain(Buffer.from(`${USER}:${PASSWORD}`).toString('base64'));
    }
  });

  const sources: CredentialSource[] = [
    'authfile-flag',
    'REGISTRY_AUTH_FILE',
    'XDG_RUNTIME_DIR auth.json',
    '~/.config/containers/auth.json',
    'DOCKER_CONFIG config.json',
    '~/.docker/config.json',
    'credHelpers',
    'credsStore',
    'namespaced auth.json key',
  ];
  it.each(sources)('finds the login in %s', async (source) => {
    const placed = placeCredentials(source, registry.host, 'creds/app', USER, PASSWORD);
    try {
      const result = await pushAndShow(image, `${registry.host}/creds/app:${source.replace(/[^a-zA-Z0-9_.-]/g, '_')}`, {
        certDir,
        stdout: null,
        progress: 'quiet',
        env: placed.env,
        authfile: placed.authfile,
      });
      expect(result.digest).toMatch(/^sha256:/);
    } finally {
      rmSync(placed.env.HOME!, { recursive: true, force: true });
    }
  });

  it('reports a wrong password in one line, without the password', async () => {
    const wrong = 'Wr0ng-but-secret-password';
    const err = capture();
    const e = await pushAndShow(image, `${registry.host}/secure/app:x`, options({ creds: `${USER}:${wrong}`, progress: 'plain', stderr: err.stream })).catch(
      (x: unknown) => x,
    );
    expect(isUserError(e)).toBe(true);
    expect((e as Error).message).toBe(`login to ${registry.host} failed: the registry refused the credentials of user "${USER}" (from --creds) (401)`);
    expect(`${(e as Error).message}${err.text()}`).not.toContain(wrong);
  });

  it('asks for a login when no credentials are found', async () => {
    const e = await pushAndShow(image, `${registry.host}/secure/app:x`, options()).catch((x: unknown) => x);
    expect(isUserError(e)).toBe(true);
    expect((e as Error).message).toMatch(new RegExp(`^${registry.host.replace(/\./g, '\\.')} requires a login: pass --creds`));
  });

  it('refuses a certificate from an unknown authority, and accepts it with --tls-verify=false', async () => {
    const otherDir = join(work, 'other-ca');
    mkdirSync(otherDir, { recursive: true });
    writeFileSync(join(otherDir, 'ca.crt'), pki.otherCaCert);
    const e = await pushAndShow(image, `${registry.host}/secure/app:x`, options({ creds: `${USER}:${PASSWORD}`, certDir: otherDir })).catch(
      (x: unknown) => x,
    );
    expect(isUserError(e)).toBe(true);
    expect((e as Error).message).toMatch(/^TLS: the certificate of 127\.0\.0\.1:\d+ is signed by an unknown authority \(\w+\); put the CA in --cert-dir/);

    const result = await pushAndShow(image, `${registry.host}/secure/app:unverified`, options({ creds: `${USER}:${PASSWORD}`, certDir: undefined, tlsVerify: false }));
    expect(result.uploaded.length + result.skipped.length).toBe(3);
  });

  it('drops the Authorization header when the registry redirects to another origin', async () => {
    const basic = `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}`;
    const tls = { ca: pki.caCert, serverTls: { cert: pki.serverCert, key: pki.serverKey } };
    // "storage" stands for a blob storage host: it authorizes by its own means (here: it adds the login itself).
    const storage = await startFaultProxy({ host: '127.0.0.1', port: registry.port, ...tls, injectAuthorization: basic });
    const front = await startFaultProxy({ host: '127.0.0.1', port: registry.port, ...tls });
    try {
      front.rule = ({ method, path }) => (method === 'HEAD' && path.includes('/blobs/sha256:') ? { kind: 'redirect', to: storage.url } : undefined);
      const result = await pushAndShow(image, `${front.host}/secure/redirected`, options({ creds: `${USER}:${PASSWORD}` }));
      expect(result.digest).toMatch(/^sha256:/);
      const redirected = front.requests.filter((r) => r.fault === 'redirect');
      expect(redirected.length).toBe(3);
      expect(redirected.every((r) => r.authorization === basic)).toBe(true);
      expect(storage.requests.map((r) => r.method)).toEqual(['HEAD', 'HEAD', 'HEAD']);
      expect(storage.requests.every((r) => r.authorization === undefined)).toBe(true);

      // A redirect from https to plain http is refused while certificates are verified.
      const plainStorage = await startFaultProxy({ host: '127.0.0.1', port: registry.port, ca: pki.caCert, injectAuthorization: basic });
      try {
        front.rule = ({ method }) => (method === 'HEAD' ? { kind: 'redirect', to: plainStorage.url } : undefined);
        const err = await pushAndShow(image, `${front.host}/secure/downgraded`, options({ creds: `${USER}:${PASSWORD}` })).catch((e: unknown) => e);
        expect(isUserError(err)).toBe(true);
        expect((err as Error).message).toBe(`${front.url} redirected to ${plainStorage.url}, which is not https (allowed only with --tls-verify=false)`);
        expect(plainStorage.requests).toEqual([]);
      } finally {
        await plainStorage.close();
      }
    } finally {
      await front.close();
      await storage.close();
    }
  });

  it('presents client.cert and client.key from --cert-dir to a registry that requires them', async () => {
    const mtls = await startRegistry({ tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.caCert, clientCa: pki.caCert } });
    try {
      const withoutClientCert = await pushAndShow(image, `${mtls.host}/mtls/app`, options()).catch((x: unknown) => x);
      expect(isUserError(withoutClientCert)).toBe(true);
      expect((withoutClientCert as Error).message).toMatch(/client certificate\b.*put client\.cert and client\.key in --cert-dir/);
      const clientDir = join(work, 'client-certs');
      mkdirSync(clientDir, { recursive: true });
      writeFileSync(join(clientDir, 'ca.crt'), pki.caCert);
      writeFileSync(join(clientDir, 'client.cert'), pki.clientCert);
      writeFileSync(join(clientDir, 'client.key'), pki.clientKey);
      const result = await pushAndShow(image, `${mtls.host}/mtls/app`, options({ certDir: clientDir }));
      expect(result.uploaded).toHaveLength(3);
    } finally {
      await mtls.stop();
    }
  });
});
