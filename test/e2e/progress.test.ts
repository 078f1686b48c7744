import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, REPO, runCli } from '../helpers/cli.js';
import { tools } from '../helpers/tools.js';

const closure = join(REPO, 'layers/demo/demo.closure');
const recipe = join(REPO, 'layers/demo/image.json');

describe('build progress', () => {
  it('prints plain lines, built or reused per layer, when not on a terminal', () => {
    const dir = mkdtempSync(join(tmpdir(), 'nix2oci-progress-'));
    const args = ['build-image', '--closure', closure, '--recipe', recipe, '--cache-dir', join(dir, 'cache'), '--output', join(dir, 'a.tar')];
    const cold = runCli(args);
    expect(cold.code).toBe(0);
    expect(cold.stderr).toMatch(/layer +1\/4 built .*busybox-demo/);
    const warm = runCli(args);
    expect(warm.stderr).toMatch(/layer +1\/4 reused .*busybox-demo/);
    expect(warm.stderr).toMatch(/wrote .*a\.tar \(4 layers, 3 reused/);
    expect(warm.stderr).not.toMatch(/\|█/);
  });

  it.runIf(tools('script'))('draws bars for the closure and the layers on a terminal', () => {
    const dir = mkdtempSync(join(tmpdir(), 'nix2oci-progress-'));
    const typescript = join(dir, 'typescript');
    // script(1) gives the CLI a pseudo-terminal, as a user's shell would.
    const command = [process.execPath, CLI, 'build-image', '--closure', closure, '--recipe', recipe, '--no-cache', '--output', join(dir, 'b.tar')]
      .map((a) => `'${a}'`)
      .join(' ');
    execFileSync('script', ['-qec', `stty cols 200 rows 40; ${command}`, typescript], { stdio: 'ignore' });
    const screen = readFileSync(typescript, 'utf8');
    expect(screen).toMatch(/closure \|[█░]+\| +100%/);
    expect(screen).toMatch(/layers +\|[█░]+\| 100% .*4 built, 0 reused/);
    expect(screen).toMatch(/wrote .*b\.tar/);
    expect(screen).not.toMatch(/layer +1\/4 built/);
  });
});
