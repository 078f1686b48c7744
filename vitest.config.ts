import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 300_000,
    // Integration tests start registries and containers; two cores do not gain from more workers.
    maxWorkers: 2,
    fileParallelism: true,
    // The JSON report lets .ci/run print a closing 'N passed, N failed' line any CI can read.
    reporters: ['default', ['json', { outputFile: 'test-results.json' }]],
  },
});
