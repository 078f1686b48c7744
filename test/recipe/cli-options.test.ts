import { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { addRecipeOptions, recipeOverridesFrom } from '../../src/cli/recipe-options.js';
import { applyOverrides } from '../../src/recipe/overrides.js';

function parse(args: string[]): ReturnType<typeof recipeOverridesFrom> {
  const command = addRecipeOptions(new Command('build-image').exitOverride());
  command.parse(args, { from: 'user' });
  return recipeOverridesFrom(command.opts());
}

describe('recipe flags', () => {
  it('parses nothing into no overrides', () => {
    expect(parse([])).toEqual({});
  });

  it('collects repeatable flags and passes single values through', () => {
    expect(
      parse([
        '--env', 'A=1', '--env', 'B=2', '--label', 'x=y', '--port', '8000/tcp', '--port', '53/udp', '--volume', '/models',
        '--copy-to-root', 'bash', '--entrypoint', '["/bin/app","serve"]', '--cmd', '--verbose', '--workdir', '/srv',
        '--user', '1000', '--stop-signal', 'SIGINT', '--healthcheck-cmd', 'true', '--healthcheck-interval', '10s',
        '--healthcheck-timeout', '2s', '--healthcheck-start-period', '1m', '--healthcheck-retries', '4', '--arch', 'arm64',
      ]),
    ).toEqual({
      env: ['A=1', 'B=2'],
      labels: ['x=y'],
      ports: ['8000/tcp', '53/udp'],
      volumes: ['/models'],
      copyToRoot: ['bash'],
      entrypoint: '["/bin/app","serve"]',
      cmd: '--verbose',
      workingDir: '/srv',
      user: '1000',
      stopSignal: 'SIGINT',
      healthcheckCmd: 'true',
      healthcheckInterval: '10s',
      healthcheckTimeout: '2s',
      healthcheckStartPeriod: '1m',
      healthcheckRetries: '4',
      architecture: 'arm64',
    });
  });

  it('turns --no-healthcheck into NONE and an empty --entrypoint into none', () => {
    const overrides = parse(['--no-healthcheck', '--entrypoint', '']);
    expect(overrides).toEqual({ noHealthcheck: true, entrypoint: '' });
    expect(applyOverrides({ entrypoint: ['/x'], healthcheck: { test: ['CMD', 'x'] } }, overrides)).toEqual({
      entrypoint: [],
      healthcheck: { test: ['NONE'] },
    });
  });
});
