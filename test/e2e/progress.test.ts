import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, REPO, runCli } from '../helpers/cli.js';
import { tools } from '../helpers/tools.js';
import { exportClosure, nixBuild } from '../helpers/nix.js';

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
    expect(screen).toMatch(/layers +\|[█░]+\| 100% 4\/4 layers, .*4 built, 0 reused/);
    expect(screen).toMatch(/wrote .*b\.tar/);
    expect(screen).not.toMatch(/layer +1\/4 built/);
  });

  it.runIf(tools('script', 'nix-build', 'nix-store'))('draws a bar for each layer being made, with its bytes, while it is', () => {
    const dir = mkdtempSync(join(tmpdir(), 'nix2oci-progress-'));
    // 48 MB of the host's libraries: compressing it takes long enough for the bar to be drawn.
    const [big] = nixBuild(
      `mkDrv "progress-big" ''mkdir -p $out; cat /usr/lib/x86_64-linux-gnu/*.so* /usr/bin/* 2>/dev/null | head -c 48000000 > $out/data''`,
    );
    const closureFile = join(dir, 'big.closure');
    exportClosure([big!], closureFile);
    const typescript = join(dir, 'typescript');
    const command = [process.execPath, CLI, 'build-image', '--closure', closureFile, '--no-cache', '--jobs', '1', '--output', join(dir, 'c.tar')]
      .map((a) => `'${a}'`)
      .join(' ');
    execFileSync('script', ['-qec', `stty cols 200 rows 40; ${command}`, typescript], { stdio: 'ignore' });
    const screen = readFileSync(typescript, 'utf8');
    // The layer's own bar, part way: its bytes out of the path's size, with a rate.
    expect(screen).toMatch(/ {2}progress-big \|[█░]+\| +\d+% [\d.]+ [KM]iB of 4\d MiB \([\d.]+ [KM]iB\/s\)/);
    expect(screen).toMatch(/layers +\|[█░]+\| 100% 2\/2 layers/);
  });
});
