import { describe, it, expect } from 'vitest';
import { statSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nixBuild, exportClosure } from '../helpers/nix.js';
import { tools } from '../helpers/tools.js';

describe.runIf(tools('nix-build', 'nix-store'))('test Nix helper', () => {
  it('builds a derivation with a reference and exports its closure', () => {
    const [out] = nixBuild(`let a = mkDrv "smoke-a" "echo a > $out"; in mkDrv "smoke-b" "mkdir $out; echo \${a} > $out/ref"`);
    expect(out).toMatch(/^\/nix\/store\/[0-9a-z]{32}-smoke-b$/);
    const file = join(mkdtempSync(join(tmpdir(), 'smoke-')), 'c.closure');
    const paths = exportClosure([out!], file);
    expect(paths).toHaveLength(2);
    expect(statSync(file).size).toBeGreaterThan(0);
  });
});
