import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { pushAndShow, type ShownPushOptions } from '../../src/cli/push-progress.js';
import { isUserError } from '../../src/util/errors.js';
import { startRegistry, type RunningRegistry } from '../helpers/registry.js';
import { tools } from '../helpers/tools.js';
import { capture } from './support/capture.js';
import { buildDemoImage, DEMO_OUTPUT } from './support/demo-image.js';
import { isolatedEnv } from './support/credentials-fixtures.js';
import { startFaultProxy, type FaultProxy } from './support/fault-proxy.js';
import { makePki, type TestPki } from './support/pki.js';
import { busyboxLayer, randomLayer, writeTestImage, type TestImage } from './support/test-image.js';
import { startTokenServer, type TokenServer } from './support/token-server.js';
import { podmanPullAndRun, skopeoCopyBack, skopeoInspect } from './support/verify.js';

const USER = 'robot';
const PASSWORD = 'T0ken-server-password-xyz';
const IDENTITY_TOKEN = 'refresh-token-abcdef-0123456789';

/**
 * Token auth: the registry sends pushes to a token server (in this process) that issues RS256 JWTs;
 * tokens are fetched for the push and mount scopes, and fetched again when the registry rejects one.
 */
describe.runIf(tools('docker-registry', 'skopeo', 'podman'))('push to a registry with token auth', () => {
  let pki: TestPki;
  let tokens: TokenServer;
  let registry: RunningRegistry;
  let proxy: FaultProxy;
  let work: string;
  let certDir: string;
  let image: TestImage;

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'nix2oci-token-'));
    pki = makePki();
    certDir = join(work, 'certs.d');
    mkdirSync(certDir);
    writeFileSync(join(certDir, 'ca.crt'), pki.caCert);
    tokens = await startTokenServer(pki, { [USER]: PASSWORD }, { [IDENTITY_TOKEN]: USER });
    registry = await startRegistry({
      tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.caCert },
      token: { realm: tokens.realm, service: tokens.service, issuer: tokens.issuer, signingCert: pki.tokenCert },
    });
    // A TLS proxy in front, to make the registry reject a token half way through a push.
    proxy = await startFaultProxy({ host: '127.0.0.1', port: registry.port, ca: pki.caCert, serverTls: { cert: pki.serverCert, key: pki.serverKey } });
    image = await writeTestImage(join(work, 'image'), { layers: [busyboxLayer(), randomLayer('t1', 50_000), randomLayer('t2', 60_000)] });
  });
  afterEach(() => {
    proxy.rule = () => undefined;
  });
  afterAll(async () => {
    await proxy?.close();
    await registry?.stop();
    await tokens?.close();
    rmSync(work, { recursive: true, force: true });
  });

  const options = (extra: ShownPushOptions = {}): ShownPushOptions => ({
    certDir,
    stdout: null,
    progress: 'quiet',
    env: isolatedEnv(work),
    creds: `${USER}:${PASSWORD}`,
    retryDelayMs: 20,
    ...extra,
  });
  const access = () => ({ tlsVerify: true, certDir, creds: `${USER}:${PASSWORD}` });

  it('pushes the demo image with a token for the push scope; skopeo and podman read it back', async () => {
    const demo = await buildDemoImage(work);
    const from = tokens.requests.length;
    const err = capture();
    const result = await pushAndShow(demo, `${registry.host}/tok/demo:1`, options({ progress: 'plain', stderr: err.stream }));
    expect(tokens.requests.slice(from)).toEqual([{ account: USER, scopes: ['repository:tok/demo:pull,push'], granted: true }]);
    expect((await skopeoInspect(`${registry.host}/tok/demo:1`, access())).Digest).toBe(result.digest);
    const back = await skopeoCopyBack(`${registry.host}/tok/demo:1`, access());
    expect(back.manifestDigest).toBe(result.digest);
    expect(back.blobs).toEqual([...demo.layers.map((l) => l.descriptor.digest), demo.configDescriptor.digest].sort());
    expect(await podmanPullAndRun(`${registry.host}/tok/demo:1`, access())).toBe(DEMO_OUTPUT);
    for (const token of tokens.issued) expect(err.text()).not.toContain(token);
    expect(err.text()).not.toContain(PASSWORD);
  });

  it('asks for pull access to the mount source and mounts from it', async () => {
    await pushAndShow(image, `${registry.host}/tok/app:1`, options());
    const from = tokens.requests.length;
    const result = await pushAndShow(image, `${registry.host}/tok/derived:1`, options({ mountFrom: ['tok/app'] }));
    expect(tokens.requests.slice(from)[0]!.scopes).toEqual(['repository:tok/app:pull', 'repository:tok/derived:pull,push']);
    expect(result.mounted).toHaveLength(4);
    expect(result.uploaded).toEqual([]);
  });

  it('fetches a new token when the registry rejects the current one in the middle of a push', async () => {
    let authorized = 0;
    proxy.rule = ({ method, path }) => {
      // The fourth authorized blob request is answered as if the token had expired.
      if (method !== 'HEAD' || !path.includes('/blobs/') || ++authorized !== 4) return undefined;
      return {
        kind: 'status',
        status: 401,
        // It also asks for a scope the push did not (as a registry may): the new token must carry it.
        wwwAuthenticate: `Bearer realm="${tokens.realm}",service="${tokens.service}",scope="repository:tok/renew:pull,push repository:tok/extra:pull",error="invalid_token"`,
      };
    };
    const issuedBefore = tokens.issued.length;
    const from = proxy.requests.length;
    const result = await pushAndShow(image, `${proxy.host}/tok/renew:1`, options({ jobs: 1 }));
    expect(tokens.issued.length - issuedBefore).toBe(2);
    expect(tokens.requests.at(-1)!.scopes).toEqual(['repository:tok/extra:pull', 'repository:tok/renew:pull,push']);
    const rejected = proxy.requests.slice(from).find((r) => r.fault === 'status')!;
    const retried = proxy.requests.slice(rejected.index + 1).find((r) => r.method === rejected.method && r.path === rejected.path)!;
    expect(retried.authorization).toBe(`Bearer ${tokens.issued.at(-1)}`);
    expect(rejected.authorization).toBe(`Bearer ${tokens.issued.at(-2)}`);
    expect((await skopeoCopyBack(`${registry.host}/tok/renew:1`, access())).manifestDigest).toBe(result.digest);
  });

  it('logs in with an identity token from a credential helper (OAuth2 refresh token)', async () => {
    const home = mkdtempSync(join(tmpdir(), 'nix2oci-home-'));
    try {
      const env = isolatedEnv(home);
      mkdirSync(join(home, 'bin'));
      writeFileSync(
        join(home, 'bin', 'docker-credential-idtoken'),
        `#!/bin/sh\nread -r server\nprintf '{"ServerURL":"%s","Username":"<token>","Secret":"${IDENTITY_TOKEN}"}' "$server"\n`,
        { mode: 0o755 },
      );
      env.PATH = `${join(home, 'bin')}:${env.PATH}`;
      mkdirSync(join(home, '.docker'));
      writeFileSync(join(home, '.docker', 'config.json'), JSON.stringify({ credHelpers: { [registry.host]: 'idtoken' } }));
      const from = tokens.requests.length;
      const result = await pushAndShow(image, `${registry.host}/tok/identity:1`, options({ creds: undefined, env }));
      expect(tokens.requests.slice(from)[0]).toEqual({ account: USER, scopes: ['repository:tok/identity:pull,push'], granted: true });
      expect(result.digest).toMatch(/^sha256:/);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });

  it('reports a wrong password and anonymous access clearly, without secrets', async () => {
    const wrong = 'Not-the-Right-Password-42';
    const err = capture();
    const e = await pushAndShow(image, `${registry.host}/tok/app:x`, options({ creds: `${USER}:${wrong}`, progress: 'plain', stderr: err.stream })).catch(
      (x: unknown) => x,
    );
    expect(isUserError(e)).toBe(true);
    const origin = new URL(tokens.realm).origin;
    expect((e as Error).message).toBe(
      `login to ${registry.host} failed: the token server ${origin} refused the credentials of user "${USER}" (from --creds) (401)`,
    );
    expect(`${(e as Error).message}${err.text()}`).not.toContain(wrong);

    const anonymous = await pushAndShow(image, `${registry.host}/tok/app:x`, options({ creds: undefined })).catch((x: unknown) => x);
    expect(isUserError(anonymous)).toBe(true);
    expect((anonymous as Error).message).toBe(`login to ${registry.host} failed: the token server ${origin} refused anonymous access (401)`);
  });
});
