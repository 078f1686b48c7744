import { describe, expect, it } from 'vitest';
import { buildConfig, formatTimestamp, parseDuration, platformOfNixSystem } from '../../src/model/config.js';
import { UserError } from '../../src/util/errors.js';
import { demoConfig } from '../output/fixtures.js';

const DIFF = `sha256:${'a'.repeat(64)}`;
const created = new Date(1_700_000_000_000);

describe('buildConfig', () => {
  it('writes the OCI config with a fixed key order, sorted maps and no whitespace', () => {
    const bytes = buildConfig(
      demoConfig({ labels: { z: '1', a: '2' }, exposedPorts: ['9000', '53/udp', '8000/tcp'], volumes: ['/var', '/data'], user: '1000:1000' }),
      [DIFF],
      { created, history: [{ createdBy: 'nix2oci', comment: 'busybox' }] },
    );
    const text = bytes.toString();
    expect(text).not.toMatch(/\s{2}|\n/);
    const config = JSON.parse(text);
    expect(Object.keys(config)).toEqual(['created', 'architecture', 'os', 'config', 'rootfs', 'history']);
    expect(config.created).toBe('2023-11-14T22:13:20Z');
    expect(Object.keys(config.config)).toEqual([
      'User', 'ExposedPorts', 'Env', 'Entrypoint', 'Cmd', 'Volumes', 'WorkingDir', 'Labels', 'StopSignal',
    ]);
    expect(Object.keys(config.config.ExposedPorts)).toEqual(['53/udp', '8000/tcp', '9000/tcp']);
    expect(Object.keys(config.config.Volumes)).toEqual(['/data', '/var']);
    expect(Object.keys(config.config.Labels)).toEqual(['a', 'z']);
    expect(config.rootfs).toEqual({ type: 'layers', diff_ids: [DIFF] });
    expect(config.history).toEqual([{ created: '2023-11-14T22:13:20Z', created_by: 'nix2oci', comment: 'busybox' }]);
  });

  it('gives the same bytes for the same spec, whatever order maps were given in', () => {
    const a = buildConfig(demoConfig({ labels: { b: '1', a: '2' }, exposedPorts: ['80', '443'] }), [DIFF], { created });
    const b = buildConfig(demoConfig({ labels: { a: '2', b: '1' }, exposedPorts: ['443/tcp', '80/tcp'] }), [DIFF], { created });
    expect(a.equals(b)).toBe(true);
  });

  it('leaves out what is not set, keeping Env (an image always has one)', () => {
    const config = JSON.parse(
      buildConfig({ architecture: 'arm64', variant: 'v8', os: 'linux', env: [], exposedPorts: [], volumes: [], labels: {} }, [], { created }).toString(),
    );
    expect(config.config).toEqual({ Env: [] });
    expect(config.variant).toBe('v8');
    expect(config).not.toHaveProperty('history');
  });

  it('writes a healthcheck as Docker does, durations in nanoseconds', () => {
    const config = JSON.parse(
      buildConfig(
        demoConfig({ healthcheck: { test: ['CMD-SHELL', 'curl -f localhost'], interval: '1m30s', timeout: 5_000_000_000, startPeriod: '500ms', retries: 3 } }),
        [DIFF],
        { created },
      ).toString(),
    );
    expect(config.config.Healthcheck).toEqual({
      Test: ['CMD-SHELL', 'curl -f localhost'],
      Interval: 90_000_000_000,
      Timeout: 5_000_000_000,
      StartPeriod: 500_000_000,
      Retries: 3,
    });
  });

  it.each([
    [{ exposedPorts: ['http'] }, /invalid exposed port "http"/],
    [{ exposedPorts: ['70000/tcp'] }, /invalid exposed port/],
    [{ env: ['NOVALUE'] }, /invalid environment entry "NOVALUE"/],
    [{ volumes: ['data'] }, /invalid volume "data"/],
    [{ workingDir: 'srv' }, /invalid working directory "srv"/],
    [{ stopSignal: 'TERM; rm' }, /invalid stop signal/],
    [{ healthcheck: { test: ['echo', 'hi'] } }, /must start with CMD, CMD-SHELL or NONE/],
    [{ healthcheck: { test: ['CMD-SHELL', 'a', 'b'] } }, /exactly one command/],
    [{ healthcheck: { test: ['CMD'], interval: '5 minutes' } }, /needs a command/],
    [{ healthcheck: { test: ['CMD', 'x'], interval: '5 minutes' } }, /invalid healthcheck interval "5 minutes"/],
  ])('refuses a bad spec with a one-line UserError: %j', (override, message) => {
    const attempt = () => buildConfig(demoConfig(override), [DIFF], { created });
    expect(attempt).toThrow(UserError);
    expect(attempt).toThrow(message);
  });

  it('insists on one non-empty history entry per layer', () => {
    expect(() => buildConfig(demoConfig(), [DIFF, DIFF], { created, history: [{ createdBy: 'x' }] })).toThrow(/history/);
  });
});

describe('helpers', () => {
  it('formats timestamps as Go does, whole seconds without a fraction', () => {
    expect(formatTimestamp(new Date(1000))).toBe('1970-01-01T00:00:01Z');
    expect(formatTimestamp(new Date(1500))).toBe('1970-01-01T00:00:01.500Z');
    expect(() => formatTimestamp(new Date(NaN))).toThrow(/SOURCE_DATE_EPOCH/);
  });

  it('parses Go durations', () => {
    expect(parseDuration('30s')).toBe(30e9);
    expect(parseDuration('1h2m3s')).toBe(3723e9);
    expect(parseDuration('1.5s')).toBe(1.5e9);
    expect(parseDuration('0')).toBe(0);
    expect(parseDuration(42)).toBe(42);
    expect(() => parseDuration('')).toThrow(UserError);
    expect(() => parseDuration('10 s')).toThrow(UserError);
    expect(() => parseDuration(-1)).toThrow(UserError);
  });

  it('maps Nix systems to OCI platforms', () => {
    expect(platformOfNixSystem('x86_64-linux')).toEqual({ architecture: 'amd64', os: 'linux' });
    expect(platformOfNixSystem('aarch64-linux')).toEqual({ architecture: 'arm64', variant: 'v8', os: 'linux' });
    expect(() => platformOfNixSystem('vax-linux')).toThrow(UserError);
    expect(() => platformOfNixSystem('linux')).toThrow(UserError);
  });
});
