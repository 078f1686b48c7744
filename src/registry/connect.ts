import type { Agent } from 'undici';
import { RegistryClient } from './client.js';
import { credentialSecrets, findCredentials } from './credentials.js';
import { Secrets } from './secrets.js';
import { registryEndpoint } from '../model/reference.js';
import type { RetryPolicy } from './retry.js';
import { loadTlsOptions } from './tls.js';
import { createAgent } from './transport.js';

/** How to reach a registry: every auth source and TLS option a push takes, so whatever talks to a registry takes the same. */
export interface RegistryAccess {
  /** `--creds USER:PASSWORD`. */
  creds?: string;
  /** `--authfile`. */
  authfile?: string;
  /** `--cert-dir`. */
  certDir?: string;
  /** `--tls-verify` (default true). false allows plain HTTP and unverified TLS. */
  tlsVerify?: boolean;
  /** Environment for credential lookup (default process.env). */
  env?: NodeJS.ProcessEnv;
}

export interface RegistrySession {
  client: RegistryClient;
  /** Every secret seen (credentials, tokens), to scrub from whatever is shown. */
  secrets: Secrets;
  close(): Promise<void>;
}

/**
 * Connects to `registry` for `scopes` (`repository:NAME:pull,push`): credentials found as podman and
 * skopeo find them (for `repository`), TLS as configured, one agent with `connections` per origin.
 * The caller closes the session.
 */
export async function openRegistry(
  registry: string,
  repository: string,
  access: RegistryAccess,
  settings: { scopes: string[]; connections: number; stallTimeoutMs: number; retry: RetryPolicy; secrets?: Secrets; signal?: AbortSignal },
): Promise<RegistrySession> {
  const secrets = settings.secrets ?? new Secrets();
  const env = access.env ?? process.env;
  let agent: Agent | undefined;
  try {
    const credentials = await findCredentials(registry, repository, { creds: access.creds, authfile: access.authfile, env });
    secrets.add(...credentialSecrets(credentials));
    const tlsVerify = access.tlsVerify ?? true;
    const tls = await loadTlsOptions(registry, { tlsVerify, certDir: access.certDir }, env);
    agent = createAgent({ tls, connections: settings.connections, stallTimeoutMs: settings.stallTimeoutMs });
    const client = await RegistryClient.connect({
      registry,
      endpoint: registryEndpoint(registry),
      agent,
      credentials,
      scopes: settings.scopes,
      tlsVerify,
      retry: settings.retry,
      secrets,
      signal: settings.signal,
    });
    const opened = agent;
    return { client, secrets, close: () => opened.close().catch(() => {}) };
  } catch (err) {
    await agent?.close().catch(() => {});
    throw secrets.error(err);
  }
}
