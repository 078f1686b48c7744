import { describe, expect, it } from 'vitest';
import { Secrets, WITHHELD } from '../../src/registry/secrets.js';
import { credentialSecrets } from '../../src/registry/credentials.js';

/** Every form a registry could echo a secret in. */
function forms(secret: string): string[] {
  return [
    secret,
    Buffer.from(secret).toString('base64'),
    Buffer.from(secret).toString('base64').replace(/=+$/, ''),
    Buffer.from(secret).toString('base64url'),
    encodeURIComponent(secret),
    JSON.stringify(secret).slice(1, -1),
  ];
}

describe('Secrets', () => {
  it('cuts every form of a secret out of any line, whatever surrounds it', () => {
    const secrets = new Secrets();
    const password = 'p@ss w/rd"+é';
    secrets.add(...credentialSecrets({ kind: 'basic', username: 'tester', password, source: '--creds' }));
    const header = `Basic ${Buffer.from(`tester:${password}`).toString('base64')}`;
    for (const form of [...forms(password), header, `tester:${password}`]) {
      const line = secrets.scrub(`500 UNAUTHORIZED: you sent <${form}> twice: ${form}${form}`);
      expect(line).not.toContain(form);
      expect(line).toContain('***');
    }
    // Tokens registered later are scrubbed too.
    secrets.add('eyJhbGciOiJSUzI1NiJ9.token-body.signature');
    expect(secrets.scrub('Bearer eyJhbGciOiJSUzI1NiJ9.token-body.signature')).toBe('Bearer ***');
  });

  it('withholds outside text holding a secret too short to cut out, and leaves other text alone', () => {
    const secrets = new Secrets();
    secrets.add(...credentialSecrets({ kind: 'basic', username: 'tester', password: 'Zq', source: '--creds' }));
    // Its longer forms are cut out; what is left holds no trace of it.
    expect(secrets.foreign('you sent Basic dGVzdGVyOlpx (tester:Zq)')).toBe('you sent Basic *** (***)');
    // The password alone is too short to cut out of a line: the registry's text is withheld whole.
    expect(secrets.foreign('wrong password Zq for tester')).toBe(WITHHELD);
    expect(secrets.foreign('a plain complaint, no credential in it')).toBe('a plain complaint, no credential in it');
    // Our own lines keep their words: a short secret is only looked for in text from outside.
    expect(secrets.scrub('Zqrs is a word of ours')).toBe('Zqrs is a word of ours');
    // Its Basic header (long) is cut out of any line.
    expect(secrets.scrub('header dGVzdGVyOlpx')).toBe('header ***');

    const one = new Secrets();
    one.add('x');
    expect(one.foreign('UNKNOWN: xyz')).toBe(WITHHELD);
    expect(one.foreign('UNKNOWN: abc')).toBe('UNKNOWN: abc');
  });

  it('scrubs an error’s message, stack and causes in place', () => {
    const secrets = new Secrets();
    secrets.add('Sup3r-Secret');
    const cause = new Error('socket said Sup3r-Secret');
    const err = new Error('failed with Sup3r-Secret', { cause });
    const aggregate = new AggregateError([new Error('inner Sup3r-Secret')], 'many Sup3r-Secret');
    expect(secrets.error(err)).toBe(err);
    secrets.error(aggregate);
    for (const text of [err.message, err.stack!, cause.message, cause.stack!, aggregate.message, aggregate.stack!, (aggregate.errors[0] as Error).message]) {
      expect(text).not.toContain('Sup3r-Secret');
    }
    expect(secrets.error('not an error')).toBe('not an error');
  });
});
