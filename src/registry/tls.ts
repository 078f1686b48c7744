import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { createSecureContext, rootCertificates, type SecureContext } from 'node:tls';
import { UserError } from '../util/errors.js';

/**
 * TLS settings for one registry, as podman and docker read them: the system CAs, plus the
 * registry's certs.d directory (`*.crt` are extra CAs, `client.cert` + `client.key` a client
 * certificate). `--cert-dir` replaces the default certs.d directories.
 */
export interface TlsSettings {
  /** Verify the server's certificate (default true). When false, plain HTTP is allowed too. */
  tlsVerify: boolean;
  /** `--cert-dir`: the only directory read for CAs and client certificates. */
  certDir?: string;
}

/**
 * Options handed to tls.connect for every connection of a push. The secure context is built once:
 * parsing the system CA bundle takes over 100 ms, too much to repeat per connection.
 */
export interface TlsConnectOptions {
  secureContext: SecureContext;
  rejectUnauthorized: boolean;
}

const SYSTEM_CA_BUNDLES = [
  '/etc/ssl/certs/ca-certificates.crt', // Debian, Ubuntu, Arch, Alpine
  '/etc/pki/tls/certs/ca-bundle.crt', // Fedora, RHEL
  '/etc/ssl/ca-bundle.pem', // openSUSE
  '/etc/ssl/cert.pem', // macOS, Alpine
];

export async function loadTlsOptions(
  registry: string,
  settings: TlsSettings,
  env: NodeJS.ProcessEnv = process.env,
): Promise<TlsConnectOptions> {
  // Unverified TLS needs no CA list, and parsing one is most of a warm push's start-up.
  const ca = settings.tlsVerify ? [...rootCertificates, ...(await systemCas(env))] : [];
  let cert: string | undefined;
  let key: string | undefined;
  let certFile: string | undefined;

  const dirs = settings.certDir ? [settings.certDir] : defaultCertDirs(registry, env);
  if (settings.certDir && !existsSync(settings.certDir)) {
    throw new UserError(`--cert-dir ${settings.certDir} does not exist`);
  }
  for (const dir of dirs) {
    const names = await readdir(dir).catch((err: NodeJS.ErrnoException) => {
      if (!settings.certDir && (err.code === 'ENOENT' || err.code === 'ENOTDIR')) return [];
      throw new UserError(`cannot read certificate directory ${dir}: ${err.code ?? err.message}`);
    });
    for (const name of names.sort()) {
      const file = join(dir, name);
      if (name.endsWith('.crt')) {
        ca.push(await readPem(file, 'CERTIFICATE'));
      } else if (name.endsWith('.cert') && !cert) {
        const keyFile = join(dir, `${name.slice(0, -'.cert'.length)}.key`);
        if (!existsSync(keyFile)) throw new UserError(`client certificate ${file} has no key: expected ${keyFile}`);
        cert = await readPem(file, 'CERTIFICATE');
        key = await readPem(keyFile, 'PRIVATE KEY');
        certFile = file;
      }
    }
  }
  try {
    return {
      secureContext: createSecureContext({ ...(ca.length > 0 && { ca }), cert, key }),
      rejectUnauthorized: settings.tlsVerify,
    };
  } catch (err) {
    const what = certFile ? `${certFile} and its key` : `the certificates in ${dirs.join(', ')}`;
    throw new UserError(`cannot use ${what}: ${(err as Error).message.split('\n')[0]}`);
  }
}

/** `/etc/containers/certs.d/<registry>`, `/etc/docker/certs.d/<registry>`, `~/.config/containers/certs.d/<registry>`. */
function defaultCertDirs(registry: string, env: NodeJS.ProcessEnv): string[] {
  const config = env.XDG_CONFIG_HOME || join(env.HOME || homedir(), '.config');
  return [
    join(config, 'containers', 'certs.d', registry),
    join('/etc/containers/certs.d', registry),
    join('/etc/docker/certs.d', registry),
  ];
}

/** Node's own CA list lacks the distribution's additions; read the system bundle and NODE_EXTRA_CA_CERTS too. */
async function systemCas(env: NodeJS.ProcessEnv): Promise<string[]> {
  const files = [env.SSL_CERT_FILE, SYSTEM_CA_BUNDLES.find((f) => existsSync(f)), env.NODE_EXTRA_CA_CERTS];
  const cas: string[] = [];
  for (const file of files) {
    if (!file) continue;
    try {
      cas.push(await readFile(file, 'utf8'));
    } catch {
      // A missing optional bundle is no reason to fail; verification will say what is missing.
    }
  }
  return cas;
}

async function readPem(file: string, kind: 'CERTIFICATE' | 'PRIVATE KEY'): Promise<string> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new UserError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  // Matches "BEGIN CERTIFICATE" and "BEGIN (RSA |EC )PRIVATE KEY".
  if (!new RegExp(`-----BEGIN [A-Z ]*${kind}-----`).test(text)) {
    throw new UserError(`${file} is not a PEM ${kind.toLowerCase()}`);
  }
  return text;
}
