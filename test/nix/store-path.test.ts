import { describe, it, expect } from 'vitest';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { UserError } from '../../src/util/errors.js';
import { storePathName, storePathProblem, isStorePath } from '../../src/nix/closure.js';
import { sha256ToHex } from '../../src/nix/nar-hash.js';
import { quote } from '../../src/util/quote.js';
import { tools } from '../helpers/tools.js';

const HASH = '0dpnhxl4nrzl63dwzm2frzkbjw9qqapz';

describe('store paths', () => {
  it('accepts what Nix accepts', () => {
    for (const name of ['python3-3.11.9', 'a', 'x+y-z_1.2?=3', 'A'.repeat(211), 'fixture-long-name-']) {
      expect(storePathProblem(`/nix/store/${HASH}-${name}`)).toBeNull();
    }
    expect(isStorePath(`/nix/store/${HASH}-foo`)).toBe(true);
  });

  it('rejects the rest, saying why', () => {
    const cases: Array<[string, string]> = [
      [`/gnu/store/${HASH}-foo`, 'it is not in /nix/store'],
      [`/nix/store/${HASH}`, 'it does not have the form <32-char hash>-<name>'],
      [`/nix/store/${HASH}-`, 'it does not have the form <32-char hash>-<name>'],
      [`/nix/store/${HASH.slice(1)}-foo`, 'it does not have the form <32-char hash>-<name>'],
      [`/nix/store/e${HASH.slice(1)}-foo`, 'its hash part has characters outside nix-base32'],
      [`/nix/store/${HASH.toUpperCase()}-foo`, 'its hash part has characters outside nix-base32'],
      [`/nix/store/${HASH}-${'A'.repeat(212)}`, 'its name is longer than 211 characters'],
      [`/nix/store/${HASH}-foo/bar`, 'its name has characters outside [A-Za-z0-9+-._?=]'],
      [`/nix/store/${HASH}-foo bar`, 'its name has characters outside [A-Za-z0-9+-._?=]'],
      [`/nix/store/${HASH}-héllo`, 'its name has characters outside [A-Za-z0-9+-._?=]'],
      [`/nix/store/${HASH}-.hidden`, "its name starts with '.'"],
    ];
    for (const [path, why] of cases) expect(storePathProblem(path), path).toBe(why);
  });

  it('names a store path', () => {
    expect(storePathName(`/nix/store/${HASH}-python3-3.11.9`)).toBe('python3-3.11.9');
    // Anything else is shown by its last component (a wheel's file name, a path outside the store).
    expect(storePathName('/usr/bin/python3')).toBe('python3');
    expect(storePathName(`${HASH}-bash-5.2`)).toBe('bash-5.2');
    expect(storePathName('image-root')).toBe('image-root');
  });
});

describe('NAR hashes as Nix prints them', () => {
  const hex = '827ac6f6a6781282e42bb2f0ffafc23871b9e6cf4ed4cfdb30f4674b6887f636';

  it('reads SRI, sha256:base32, sha256:hex and sha256:base64', () => {
    expect(sha256ToHex('sha256-gnrG9qZ4EoLkK7Lw/6/COHG55s9O1M/bMPRnS2iH9jY=')).toBe(hex);
    expect(sha256ToHex('sha256:0dpnhxl4nrzl63dwzm2frzkbjw9qqapzzw5j5gj844kqlvvccyl2')).toBe(hex);
    expect(sha256ToHex('0dpnhxl4nrzl63dwzm2frzkbjw9qqapzzw5j5gj844kqlvvccyl2')).toBe(hex);
    expect(sha256ToHex(`sha256:${hex.toUpperCase()}`)).toBe(hex);
    expect(sha256ToHex('sha256:gnrG9qZ4EoLkK7Lw/6/COHG55s9O1M/bMPRnS2iH9jY=')).toBe(hex);
  });

  it('rejects what is not a sha256', () => {
    for (const bad of [
      '',
      'sha256-',
      'sha512-gnrG9qZ4EoLkK7Lw/6/COHG55s9O1M/bMPRnS2iH9jY=',
      'sha256-gnrG9qZ4EoLkK7Lw/6/COHG55s9O1M/bMPRnS2iH9j=',
      'sha256:0dpnhxl4nrzl63dwzm2frzkbjw9qqapzzw5j5gj844kqlvvccyle', // 'e' is not a nix-base32 digit
      'sha256:z0000000000000000000000000000000000000000000000000000'.slice(0, 59), // bits beyond 256
      hex.slice(1),
    ]) {
      expect(sha256ToHex(bad), bad).toBeNull();
    }
  });

  it.runIf(tools('nix'))('decodes nix-base32 exactly as Nix encodes it', () => {
    const hashes = [hex, '00'.repeat(32), 'ff'.repeat(32), ...Array.from({ length: 4 }, () => randomBytes(32).toString('hex'))];
    const base32 = execFileSync('nix', ['hash', 'to-base32', '--type', 'sha256', ...hashes], { encoding: 'utf8' }).trim().split('\n');
    expect(base32).toHaveLength(hashes.length);
    base32.forEach((text, i) => expect(sha256ToHex(`sha256:${text}`)).toBe(hashes[i]));
  });
});

describe('quoting untrusted text for one-line messages', () => {
  it('escapes control characters and quotes, and cuts long values', () => {
    expect(quote('plain')).toBe("'plain'");
    expect(quote("a'b\\c")).toBe("'a\\'b\\\\c'");
    expect(quote('new\nline\ttab\0nul\x1b')).toBe("'new\\nline\\ttab\\x00nul\\x1b'");
    expect(quote('日本語')).toBe("'日本語'");
    expect(quote('x'.repeat(300))).toBe(`'${'x'.repeat(200)}…(300 chars)'`);
  });
});
