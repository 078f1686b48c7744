import { defineConfig } from 'vitest/config';
import base from './vitest.config';

/**
 * `npm run test:unit`: the fast loop. Every test that needs nothing but Node and a base system (sh,
 * coreutils, GNU tar, gzip; see BASE_TOOLS in test/helpers/tools.ts). In files that mix both, the tests
 * guarded by `tools(…)` for anything more are left out (NIX2OCI_TEST_SCOPE=unit), whether or not the
 * machine has the tool. The files below need such tools (Nix, podman, skopeo, umoci, runc, a registry,
 * containerd, docker, Python, a C compiler), or the npm registry, in every test or in their setup.
 *
 * `npm test` (CI's command) runs everything, these files included.
 */
export const INTEGRATION_FILES = [
  'test/e2e/**',
  'test/smoke/**',
  'test/reference/**',
  'test/cache/cache-cli.test.ts',
  'test/cache/wheel-cache.test.ts',
  'test/layer/gzip-node-versions.test.ts',
  'test/layer/store-path-source.test.ts',
  'test/nix/bad-input.test.ts',
  'test/nix/read-export.test.ts',
  'test/output/tools.test.ts',
  'test/registry/faults.test.ts',
  'test/registry/push-*.test.ts',
  'test/rootfs/root-layer.nix.test.ts',
  'test/wheels/container.test.ts',
  'test/wheels/install.test.ts',
  'test/wheels/lock.test.ts',
  'test/wheels/problems-cli.test.ts',
  'test/wheels/split.test.ts',
  'test/wheels/verify.test.ts',
  'test/wheels/wheel-info.test.ts',
  'test/wheels/checks/checks-e2e.test.ts',
  'test/wheels/checks/elf-collector.test.ts',
  'test/wheels/checks/python-and-traps.test.ts',
  'test/wheels/checks/python-closure.test.ts',
];

export default defineConfig({
  test: {
    ...base.test,
    exclude: [...INTEGRATION_FILES, '**/node_modules/**'],
    env: { NIX2OCI_TEST_SCOPE: 'unit' },
    // test-results.json is the full run's report (.ci/run reads it): the fast loop leaves it alone.
    reporters: ['default'],
  },
});
