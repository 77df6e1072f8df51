import { defineConfig } from 'vitest/config';

/**
 * Two tiers: `unit` (npm test: npm alone, in-process fakes, real SQLite/filesystem) and `e2e`
 * (npm run test:e2e: Debian's docker-registry as the upstream, skopeo as the client).
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
    ],
  },
});
