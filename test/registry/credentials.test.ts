import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { findCredentials } from '../../src/registry/credentials.js';
import { isUserError } from '../../src/util/errors.js';
import { isolatedEnv, writeCredentialHelper } from './support/credentials-fixtures.js';

const b64 = (s: string) => Buffer.from(s).toString('base64');

/** Where logins are found and in which order, and how broken auth files and helpers are reported. */
describe('credential lookup', () => {
  let home: string;
  let env: NodeJS.ProcessEnv;
  const write = (path: string, value: unknown) => {
    mkdirSync(join(path, '..'), { recursive: true });
    writeFileSync(path, typeof value === 'string' ? value : JSON.stringify(value));
    return path;
  };
  const failure = async (promise: Promise<unknown>) => {
    const err = await promise.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isUserError(err)).toBe(true);
    expect((err as Error).message).not.toContain('\n');
    return (err as Error).message;
  };

  beforeEach(() => {
    home = mkdtempSync(join(tmpdir(), 'nix2oci-creds-'));
    env = isolatedEnv(home);
  });
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  it('finds nothing when nothing is configured', async () => {
    expect(await findCredentials('r.example:5000', 'a/b', { env })).toBeUndefined();
  });

  it('prefers podman’s auth.json over docker’s config.json', async () => {
    write(join(home, '.docker', 'config.json'), { auths: { 'r.example': { auth: b64('docker:pw1') } } });
    write(join(home, '.config', 'containers', 'auth.json'), { auths: { 'r.example': { auth: b64('podman:pw2') } } });
    expect(await findCredentials('r.example', 'a', { env })).toEqual({
      kind: 'basic',
      username: 'podman',
      password: 'pw2',
      source: join(home, '.config', 'containers', 'auth.json'),
    });
  });

  it('uses only the --authfile when one is given, and fails when it is missing', async () => {
    write(join(home, '.docker', 'config.json'), { auths: { 'r.example': { auth: b64('docker:pw') } } });
    const authfile = write(join(home, 'a.json'), { auths: {} });
    expect(await findCredentials('r.example', 'a', { env, authfile })).toBeUndefined();
    expect(await failure(findCredentials('r.example', 'a', { env, authfile: join(home, 'missing.json') }))).toBe(
      `cannot read auth file ${join(home, 'missing.json')}: ENOENT`,
    );
  });

  it('matches docker’s URL-style keys, Docker Hub’s legacy key and username/password entries', async () => {
    write(join(home, '.docker', 'config.json'), {
      auths: {
        'https://index.docker.io/v1/': { auth: b64('hubuser:hubpw') },
        'http://r.example:5000': { username: 'u', password: 'p' },
      },
    });
    expect(await findCredentials('docker.io', 'library/alpine', { env })).toMatchObject({ username: 'hubuser', password: 'hubpw' });
    expect(await findCredentials('r.example:5000', 'x', { env })).toMatchObject({ username: 'u', password: 'p' });
  });

  it('returns an identity token as such', async () => {
    write(join(home, '.docker', 'config.json'), { auths: { 'r.example': { identitytoken: 'refresh-xyz' } } });
    expect(await findCredentials('r.example', 'a', { env })).toMatchObject({ kind: 'identity-token', token: 'refresh-xyz' });
  });

  it('goes on to the next file when a credential helper has no login for the registry', async () => {
    writeCredentialHelper(join(home, 'bin'), 'other.example', 'u', 'p');
    env.PATH = `${join(home, 'bin')}:${env.PATH}`;
    write(join(home, '.config', 'containers', 'auth.json'), { credHelpers: { 'r.example': 'test' } });
    write(join(home, '.docker', 'config.json'), { auths: { 'r.example': { auth: b64('fallback:pw') } } });
    expect(await findCredentials('r.example', 'a', { env })).toMatchObject({ username: 'fallback' });
  });

  it('reports broken auth files and helpers in one line, naming the file and never the secret', async () => {
    const config = write(join(home, '.docker', 'config.json'), '{"auths": {"r.example": {"auth": "xx"}}, oops}');
    expect(await failure(findCredentials('r.example', 'a', { env }))).toMatch(
      new RegExp(`^auth file ${config} is not valid JSON \\(at byte offset \\d+\\)$`),
    );

    write(config, { auths: { 'r.example': { auth: b64('no-colon-here') } } });
    expect(await failure(findCredentials('r.example', 'a', { env }))).toBe(
      `auth file ${config}: auths["r.example"].auth is not base64 of USER:PASSWORD`,
    );

    write(config, { credHelpers: { 'r.example': 'absent' } });
    expect(await failure(findCredentials('r.example', 'a', { env }))).toBe(
      `credential helper docker-credential-absent (named in ${config}) is not on PATH`,
    );

    const bin = join(home, 'bin');
    mkdirSync(bin, { recursive: true });
    writeFileSync(join(bin, 'docker-credential-broken'), '#!/bin/sh\necho "keychain locked" >&2\nexit 3\n');
    chmodSync(join(bin, 'docker-credential-broken'), 0o755);
    env.PATH = `${bin}:${env.PATH}`;
    write(config, { credsStore: 'broken' });
    expect(await failure(findCredentials('r.example', 'a', { env }))).toBe(
      'credential helper docker-credential-broken exited with status 3 for r.example: keychain locked',
    );
  });

  it('wants USER:PASSWORD from --creds', async () => {
    expect(await failure(findCredentials('r', 'a', { creds: 'justauser' }))).toBe('--creds needs USER:PASSWORD');
    expect(await findCredentials('r', 'a', { creds: 'u:p:with:colons' })).toMatchObject({ username: 'u', password: 'p:with:colons' });
  });
});
