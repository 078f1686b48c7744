import { describe, expect, it } from 'vitest';
import { parseRange } from '../../src/registry/blob-upload.js';
import { parseChallenges } from '../../src/registry/challenge.js';
import { parseBoolean, parseSize } from '../../src/cli/flags.js';
import { formatReference, parseReference, registryEndpoint } from '../../src/model/reference.js';
import { DEFAULT_RETRY_POLICY, isRetriableStatus, parseRetryAfter, retryDelay } from '../../src/registry/retry.js';
import { isUserError } from '../../src/util/errors.js';

describe('image references', () => {
  it.each([
    ['localhost:5000/team/app:v1', { registry: 'localhost:5000', repository: 'team/app', tag: 'v1' }],
    ['localhost/app', { registry: 'localhost', repository: 'app' }],
    ['127.0.0.1:5000/app', { registry: '127.0.0.1:5000', repository: 'app' }],
    ['[::1]:5000/a/b/c:latest', { registry: '[::1]:5000', repository: 'a/b/c', tag: 'latest' }],
    ['registry.example.com/ns/app', { registry: 'registry.example.com', repository: 'ns/app' }],
    ['ghcr.io/o/app:1.2.3-rc_1', { registry: 'ghcr.io', repository: 'o/app', tag: '1.2.3-rc_1' }],
    ['alpine', { registry: 'docker.io', repository: 'library/alpine' }],
    ['team/app:x', { registry: 'docker.io', repository: 'team/app', tag: 'x' }],
    [
      `r.io/app@sha256:${'a'.repeat(64)}`,
      { registry: 'r.io', repository: 'app', digest: `sha256:${'a'.repeat(64)}` },
    ],
    ['r.io/a.b/c__d/e-f/g--h:t', { registry: 'r.io', repository: 'a.b/c__d/e-f/g--h', tag: 't' }],
  ])('parses %s', (text, expected) => {
    expect(parseReference(text)).toEqual(expected);
  });

  it.each([
    ['', /expected HOST/],
    ['https://r.io/app', /leave out the scheme/],
    ['r.io/App', /must be lowercase/],
    ['r.io/app:-bad', /not a valid tag/],
    ['r.io/', /repository is missing/],
    ['r.io:99999/app', /port 99999 is out of range/],
    ['r.io/app@sha256:abc', /not a sha256 digest/],
    ['r.io/a//b', /component ""/],
  ])('rejects %j with a one-line UserError', (text, message) => {
    let error: unknown;
    try {
      parseReference(text);
    } catch (e) {
      error = e;
    }
    expect(isUserError(error)).toBe(true);
    expect((error as Error).message).toMatch(message);
    expect((error as Error).message).not.toContain('\n');
  });

  it('formats references and maps Docker Hub to its API host', () => {
    expect(formatReference({ registry: 'h:1', repository: 'a/b' }, 't', 'sha256:x')).toBe('h:1/a/b:t@sha256:x');
    expect(registryEndpoint('docker.io')).toBe('registry-1.docker.io');
    expect(registryEndpoint('localhost:5000')).toBe('localhost:5000');
  });
});

describe('WWW-Authenticate challenges', () => {
  it('parses a Bearer challenge with quoted, escaped and comma-holding values', () => {
    expect(
      parseChallenges('Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push",error="in\\"valid"'),
    ).toEqual([
      {
        scheme: 'bearer',
        params: { realm: 'https://auth.example.com/token', service: 'registry.example.com', scope: 'repository:a/b:pull,push', error: 'in"valid' },
      },
    ]);
  });

  it('parses several challenges in one header, token68 included', () => {
    expect(parseChallenges('Negotiate abc==, Basic realm="r", Bearer realm=https://t/token')).toEqual([
      { scheme: 'negotiate', params: {} },
      { scheme: 'basic', params: { realm: 'r' } },
      { scheme: 'bearer', params: { realm: 'https://t/token' } },
    ]);
  });

  it('returns nothing usable for garbage', () => {
    expect(parseChallenges('')).toEqual([]);
    expect(parseChallenges('   ,  ')).toEqual([]);
  });
});

describe('retry policy', () => {
  it('retries 408, 429 and 5xx except 501', () => {
    expect([408, 429, 500, 502, 503, 504].every(isRetriableStatus)).toBe(true);
    expect([400, 401, 403, 404, 416, 501].some(isRetriableStatus)).toBe(false);
  });

  it('backs off exponentially with jitter, within bounds', () => {
    const policy = { ...DEFAULT_RETRY_POLICY, baseDelayMs: 100, maxDelayMs: 1000 };
    expect(retryDelay(policy, 1, undefined, () => 0)).toBe(50);
    expect(retryDelay(policy, 1, undefined, () => 1)).toBe(100);
    expect(retryDelay(policy, 3, undefined, () => 1)).toBe(400);
    expect(retryDelay(policy, 10, undefined, () => 1)).toBe(1000);
    expect(retryDelay(policy, 10, undefined, () => 0)).toBe(500);
  });

  it('honours Retry-After in seconds or as a date, capped', () => {
    const now = Date.parse('2025-01-01T00:00:00Z');
    expect(parseRetryAfter('3', now)).toBe(3000);
    expect(parseRetryAfter('Wed, 01 Jan 2025 00:00:10 GMT', now)).toBe(10_000);
    expect(parseRetryAfter('soon', now)).toBeUndefined();
    expect(retryDelay({ ...DEFAULT_RETRY_POLICY, maxDelayMs: 5000 }, 1, 3_600_000)).toBe(5000);
  });
});

describe('upload ranges', () => {
  it('reads Range: 0-<last> as the bytes held', () => {
    expect(parseRange('0-1023', undefined)).toBe(1024);
    expect(parseRange('bytes=0-99', undefined)).toBe(100);
    expect(parseRange('0-0', undefined)).toBe(0); // distribution's answer for an empty session
    expect(parseRange('0-0', 1)).toBe(1); // ...and for one byte, when one byte was sent
    expect(parseRange('0--1', undefined)).toBe(0);
    expect(parseRange(undefined, 500)).toBe(500);
    expect(parseRange('5-9', undefined)).toBeUndefined();
  });
});

describe('push flags', () => {
  it('parses sizes in binary units', () => {
    expect(parseSize('65536')).toBe(65536);
    expect(parseSize('512K')).toBe(512 * 1024);
    expect(parseSize('16M')).toBe(16 << 20);
    expect(parseSize('16MiB')).toBe(16 << 20);
    expect(parseSize('1g')).toBe(1 << 30);
    expect(() => parseSize('lots')).toThrow(/size such as 16M/);
  });

  it('parses --tls-verify values', () => {
    expect(parseBoolean('false')).toBe(false);
    expect(parseBoolean('TRUE')).toBe(true);
    expect(parseBoolean(true)).toBe(true);
    expect(() => parseBoolean('maybe')).toThrow(/true or false/);
  });
});
