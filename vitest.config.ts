import { defineConfig } from 'vitest/config';

/**
 * Three tiers: `unit` (npm test: npm alone, in-process fakes, real SQLite/filesystem), `e2e`
 * (npm run test:e2e: Debian's docker-registry as the upstream, skopeo as the client) and `deployed`
 * (npm run test:deployed: the packaged zips run as Lambda functions on moto, test/support/deployed/).
 */
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          testTimeout: 20_000,
        },
      },
      {
        test: {
          name: 'e2e',
          include: ['test/e2e/**/*.e2e.test.ts'],
          testTimeout: 180_000,
          hookTimeout: 180_000,
          fileParallelism: false,
        },
      },
      {
        test: {
          name: 'deployed',
          include: ['test/deployed/**/*.deployed.test.ts'],
          testTimeout: 120_000,
          hookTimeout: 180_000,
          fileParallelism: false,
        },
      },
    ],
  },
});
