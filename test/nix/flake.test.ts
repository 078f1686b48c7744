import { describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cliOk, REPO } from '../helpers/cli.js';
import { nixBuild } from '../helpers/nix.js';
import { tools } from '../helpers/tools.js';

/**
 * flake.nix, without nixpkgs (none here): its outputs' structure evaluated with real Nix against a
 * stand-in nixpkgs that only records what it is asked for (nothing is built from it), and the export
 * app's script run for real on a store path made with Nix, its export read by nix2oci.
 */

/** A stand-in nixpkgs: `import nixpkgs { … }` gives these few names; anything forced beyond them fails. */
const STUB_NIXPKGS = `{ system, config ? { } }:
let drv = name: attrs: attrs // { inherit name; type = "derivation"; outPath = "/nix/store/00000000000000000000000000000000-\${name}"; };
in {
  mkShell = attrs: drv "nix-shell" attrs;
  writeShellApplication = args: drv args.name { inherit (args) runtimeInputs; };
  nix = drv "nix" { };
  coreutils = drv "coreutils" { };
  allowUnfree = config.allowUnfree;
}`;

function evaluateFlake(select: string) {
  const dir = mkdtempSync(join(tmpdir(), 'nix2oci-flake-'));
  try {
    writeFileSync(join(dir, 'default.nix'), STUB_NIXPKGS);
    const expr = `let
      flake = import ${REPO}/flake.nix;
      outputs = flake.outputs { self = outputs; nixpkgs = ${dir}; };
    in ${select}`;
    const run = spawnSync('nix-instantiate', ['--eval', '--strict', '--json', '-E', expr], { encoding: 'utf8' });
    expect(run.status, run.stderr).toBe(0);
    return JSON.parse(run.stdout);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe.runIf(tools('nix-instantiate'))('flake.nix', () => {
  it('parses, and asks for nixpkgs from nixos-unstable (ROCm 7)', () => {
    execFileSync('nix-instantiate', ['--parse', join(REPO, 'flake.nix')], { stdio: ['ignore', 'ignore', 'pipe'] });
    expect(evaluateFlake('flake.inputs')).toEqual({ nixpkgs: { url: 'github:NixOS/nixpkgs/nixos-unstable' } });
  });

  it('has the dev shells, packages, export apps and the NixOS module', () => {
    const names = evaluateFlake(`{
      packages = builtins.attrNames outputs.packages.x86_64-linux;
      apps = builtins.mapAttrs (_: a: a.type) outputs.apps.x86_64-linux;
      programs = builtins.mapAttrs (_: a: a.program) outputs.apps.x86_64-linux;
      devShells = builtins.attrNames outputs.devShells.x86_64-linux;
      modules = builtins.attrNames outputs.nixosModules;
      moduleIsFunction = builtins.isFunction outputs.nixosModules.vllm-rocm;
    }`);
    expect(names.packages).toEqual(['default', 'export-vllm-rocm', 'export-vllm-rocm-py311', 'vllm-rocm-runtime', 'vllm-rocm-runtime-py311']);
    expect(names.apps).toEqual({ 'export-vllm-rocm': 'app', 'export-vllm-rocm-py311': 'app' });
    expect(names.programs['export-vllm-rocm']).toBe('/nix/store/00000000000000000000000000000000-export-vllm-rocm/bin/export-vllm-rocm');
    expect(names.devShells).toEqual(['vllm', 'vllm-py311']);
    expect(names.modules).toEqual(['vllm-rocm']);
    expect(names.moduleIsFunction).toBe(true);
  });

  it("gives the dev shell the image's settings (image.json) and the export app nix and coreutils", () => {
    const image = JSON.parse(readFileSync(join(REPO, 'layers/vllm-rocm/image.json'), 'utf8'));
    const keys = ['VLLM_ROCM_USE_AITER', 'PYTORCH_ROCM_ARCH', 'HIP_VISIBLE_DEVICES', 'TOKENIZERS_PARALLELISM', 'HIP_FORCE_DEV_KERNARG', 'MODEL_PATH'];
    const shell = evaluateFlake(`let s = outputs.devShells.x86_64-linux.vllm; in {
      settings = { ${keys.map((k) => `${k} = s.${k};`).join(' ')} };
      hasImagePath = s ? PATH;
      inputs = map (p: p.name) outputs.packages.x86_64-linux.export-vllm-rocm.runtimeInputs;
    }`);
    expect(shell.settings).toEqual(Object.fromEntries(keys.map((k) => [k, image.env[k]])));
    // The image's own PATH (/bin) is not the shell's.
    expect(shell.hasImagePath).toBe(false);
    expect(shell.inputs).toEqual(['nix', 'coreutils']);
  });
});

describe.runIf(tools('nix-build', 'nix-store', 'nix', 'shellcheck'))("the export app's script", () => {
  it('passes shellcheck as writeShellApplication runs it, and writes an export nix2oci builds from', () => {
    const script = readFileSync(join(REPO, 'nix/export-runtime.sh'), 'utf8');
    const [root] = nixBuild(`[ (mkDrv "vllm-rocm-runtime" "mkdir -p $out/bin; printf '#!/bin/sh\\\\necho hello\\\\n' > $out/bin/hello; chmod +x $out/bin/hello") ]`);
    // writeShellApplication: a bash shebang, strict mode, the flake's export line, then the text.
    const app = `#!/bin/bash\nset -o errexit\nset -o nounset\nset -o pipefail\n\nexport NIX2OCI_EXPORT_ROOTS=${root}\n${script}`;
    const check = spawnSync('shellcheck', ['-s', 'bash', '-'], { input: app, encoding: 'utf8' });
    expect(check.stdout + check.stderr).toBe('');
    expect(check.status).toBe(0);

    const dir = mkdtempSync(join(tmpdir(), 'nix2oci-export-app-'));
    try {
      writeFileSync(join(dir, 'app'), app, { mode: 0o755 });
      const out = join(dir, 'out/vllm-rocm');
      const run = spawnSync(join(dir, 'app'), [out], { encoding: 'utf8' });
      expect(run.status, run.stderr).toBe(0);
      expect(run.stdout).toBe(`wrote ${out}.closure (1 store paths) and ${out}.path-info.json for nix2oci build-image\n`);
      expect(existsSync(`${out}.closure.tmp`)).toBe(false);
      const recipe = join(dir, 'image.json');
      writeFileSync(recipe, JSON.stringify({ copyToRoot: ['vllm-rocm-runtime'], entrypoint: ['/bin/hello'] }));
      cliOk(['build-image', '-q', '--closure', `${out}.closure`, '--path-info', `${out}.path-info.json`, '--recipe', recipe, '--output', join(dir, 'image.tar')]);
      const inspect = JSON.parse(cliOk(['inspect', '--json', join(dir, 'image.tar')]).stdout);
      expect(inspect.layers.flatMap((l: { contents?: string[] }) => l.contents ?? [])).toContain(root);

      // Without the flake's export line it says what is missing.
      const bare = spawnSync('bash', ['-c', script, 'export-vllm-rocm', out], { encoding: 'utf8', env: { PATH: process.env.PATH } });
      expect(bare.status).not.toBe(0);
      expect(bare.stderr).toContain('NIX2OCI_EXPORT_ROOTS names the store paths to export');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
