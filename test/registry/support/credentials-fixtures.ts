import { chmodSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Places credentials where each source keeps them, in a fresh fake home, and returns the
 * environment that makes a push find them there (and nowhere else).
 */
export type CredentialSource =
  | 'authfile-flag'
  | 'REGISTRY_AUTH_FILE'
  | 'XDG_RUNTIME_DIR auth.json'
  | '~/.config/containers/auth.json'
  | 'DOCKER_CONFIG config.json'
  | '~/.docker/config.json'
  | 'credHelpers'
  | 'credsStore'
  | 'namespaced auth.json key';

export interface PlacedCredentials {
  env: NodeJS.ProcessEnv;
  authfile?: string;
}

/** A base environment with a private HOME and no inherited credential locations. */
export function isolatedEnv(home: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, HOME: home };
  for (const key of ['REGISTRY_AUTH_FILE', 'XDG_RUNTIME_DIR', 'XDG_CONFIG_HOME', 'DOCKER_CONFIG']) delete env[key];
  // Without XDG_RUNTIME_DIR, root's podman default is /run/containers/0/auth.json: point it somewhere empty.
  env.XDG_RUNTIME_DIR = join(home, 'run');
  return env;
}

const auth = (user: string, password: string) => Buffer.from(`${user}:${password}`).toString('base64');

/**
 * A `docker-credential-test` helper that knows one registry's login, as a real helper would
 * (`get` reads the server URL on stdin, prints JSON; "credentials not found" otherwise).
 */
export function writeCredentialHelper(binDir: string, registry: string, user: string, secret: string): void {
  mkdirSync(binDir, { recursive: true });
  const script = `#!/bin/sh
[ "$1" = get ] || exit 2
read -r server
if [ "$server" = "${registry}" ]; then
  printf '{"ServerURL":"%s","Username":"%s","Secret":"%s"}\\n' "$server" '${user}' '${secret}'
else
  echo "credentials not found in native keychain"
  exit 1
fi
`;
  writeFileSync(join(binDir, 'docker-credential-test'), script);
  chmodSync(join(binDir, 'docker-credential-test'), 0o755);
}

export function placeCredentials(
  source: CredentialSource,
  registry: string,
  repository: string,
  user: string,
  password: string,
): PlacedCredentials {
  const home = mkdtempSync(join(tmpdir(), 'nix2oci-home-'));
  const env = isolatedEnv(home);
  const json = (file: string, value: unknown) => {
    mkdirSync(join(file, '..'), { recursive: true });
    writeFileSync(file, JSON.stringify(value));
    return file;
  };
  const auths = { auths: { [registry]: { auth: auth(user, password) } } };
  switch (source) {
    case 'authfile-flag':
      return { env, authfile: json(join(home, 'my-auth.json'), auths) };
    case 'REGISTRY_AUTH_FILE':
      env.REGISTRY_AUTH_FILE = json(join(home, 'env-auth.json'), auths);
      return { env };
    case 'XDG_RUNTIME_DIR auth.json':
      json(join(env.XDG_RUNTIME_DIR!, 'containers', 'auth.json'), auths);
      return { env };
    case '~/.config/containers/auth.json':
      json(join(home, '.config', 'containers', 'auth.json'), auths);
      return { env };
    case 'DOCKER_CONFIG config.json':
      env.DOCKER_CONFIG = join(home, 'docker-config');
      // docker writes username/password-less entries with `auth`; the legacy URL form of the key must match too.
      json(join(env.DOCKER_CONFIG, 'config.json'), { auths: { [`https://${registry}`]: { auth: auth(user, password) } } });
      return { env };
    case '~/.docker/config.json':
      json(join(home, '.docker', 'config.json'), auths);
      return { env };
    case 'credHelpers':
    case 'credsStore': {
      const bin = join(home, 'bin');
      writeCredentialHelper(bin, registry, user, password);
      env.PATH = `${bin}:${env.PATH}`;
      json(join(home, '.docker', 'config.json'), source === 'credHelpers' ? { credHelpers: { [registry]: 'test' } } : { credsStore: 'test' });
      return { env };
    }
    case 'namespaced auth.json key':
      // podman may key logins by registry/namespace; a wrong login for the bare registry must lose to it.
      json(join(home, '.config', 'containers', 'auth.json'), {
        auths: { [registry]: { auth: auth(user, 'wrong') }, [`${registry}/${repository.split('/')[0]}`]: { auth: auth(user, password) } },
      });
      return { env };
  }
}
