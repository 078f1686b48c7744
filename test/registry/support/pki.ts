import { generateKeyPairSync, randomBytes } from 'node:crypto';
import forge from 'node-forge';

/**
 * Certificates for the TLS set-ups, made with node-forge: a CA, a server certificate it signs for
 * 127.0.0.1 and localhost, a self-signed certificate whose key signs the token server's JWTs, and
 * an unrelated CA (for "unknown authority" tests), and a client certificate. RSA keys come from node:crypto (fast, native).
 */
export interface TestPki {
  caCert: string;
  serverCert: string;
  serverKey: string;
  tokenCert: string;
  tokenKey: forge.pki.rsa.PrivateKey;
  otherCaCert: string;
  /** A client certificate the CA signs, for registries that require one. */
  clientCert: string;
  clientKey: string;
}

function rsaKeys(): { privateKey: forge.pki.rsa.PrivateKey; publicKey: forge.pki.rsa.PublicKey; pem: string } {
  const { privateKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    privateKeyEncoding: { type: 'pkcs1', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
  const key = forge.pki.privateKeyFromPem(privateKey) as forge.pki.rsa.PrivateKey;
  return { privateKey: key, publicKey: forge.pki.setRsaPublicKey(key.n, key.e), pem: privateKey };
}

function certificate(
  subject: string,
  keys: { publicKey: forge.pki.rsa.PublicKey },
  issuer: { name: string; key: forge.pki.rsa.PrivateKey } | 'self',
  extensions: object[],
  signingKey: forge.pki.rsa.PrivateKey,
): forge.pki.Certificate {
  const cert = forge.pki.createCertificate();
  cert.publicKey = keys.publicKey;
  cert.serialNumber = `01${randomBytes(8).toString('hex')}`;
  cert.validity.notBefore = new Date(Date.now() - 24 * 3600_000);
  cert.validity.notAfter = new Date(Date.now() + 365 * 24 * 3600_000);
  cert.setSubject([{ name: 'commonName', value: subject }]);
  cert.setIssuer([{ name: 'commonName', value: issuer === 'self' ? subject : issuer.name }]);
  cert.setExtensions(extensions);
  cert.sign(issuer === 'self' ? signingKey : issuer.key, forge.md.sha256.create());
  return cert;
}

function makeCa(name: string) {
  const keys = rsaKeys();
  const cert = certificate(
    name,
    keys,
    'self',
    [
      { name: 'basicConstraints', cA: true, critical: true },
      { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    ],
    keys.privateKey,
  );
  return { keys, cert };
}

export function makePki(): TestPki {
  const ca = makeCa('nix2oci test CA');
  const server = rsaKeys();
  const serverCert = certificate(
    '127.0.0.1',
    server,
    { name: 'nix2oci test CA', key: ca.keys.privateKey },
    [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames: [{ type: 7, ip: '127.0.0.1' }, { type: 2, value: 'localhost' }] },
    ],
    ca.keys.privateKey,
  );
  const token = rsaKeys();
  const tokenCert = certificate(
    'nix2oci token signer',
    token,
    'self',
    [
      { name: 'basicConstraints', cA: true },
      { name: 'keyUsage', digitalSignature: true, keyCertSign: true },
    ],
    token.privateKey,
  );
  const other = makeCa('some other CA');
  const client = rsaKeys();
  const clientCert = certificate(
    'nix2oci test client',
    client,
    { name: 'nix2oci test CA', key: ca.keys.privateKey },
    [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
      { name: 'extKeyUsage', clientAuth: true },
    ],
    ca.keys.privateKey,
  );
  return {
    caCert: forge.pki.certificateToPem(ca.cert),
    serverCert: forge.pki.certificateToPem(serverCert),
    serverKey: server.pem,
    tokenCert: forge.pki.certificateToPem(tokenCert),
    tokenKey: token.privateKey,
    otherCaCert: forge.pki.certificateToPem(other.cert),
    clientCert: forge.pki.certificateToPem(clientCert),
    clientKey: client.pem,
  };
}

/** base64 of a PEM certificate's DER, as a JWT's `x5c` carries it. */
export function certificateDerBase64(pem: string): string {
  const der = forge.asn1.toDer(forge.pki.certificateToAsn1(forge.pki.certificateFromPem(pem))).getBytes();
  return forge.util.encode64(der);
}
