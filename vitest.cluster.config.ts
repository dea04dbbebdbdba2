// `npm run test:cluster`: the rotation, lease and audit suites against a real Redis Cluster of three masters
// (test/support/cluster-setup.ts), plus the cluster's own tests (test/cluster). Same tests as `npm test` runs
// against one Redis: only the topology differs.
import { defineConfig } from 'vitest/config';

export const CLUSTER_SUITES = [
  'test/cluster/**/*.test.ts',
  'test/integration/rotation-*.test.ts',
  'test/integration/rollback-messages.test.ts',
  'test/integration/half-done-writes.test.ts',
  'test/integration/leases.test.ts',
  'test/integration/*-lease-users.test.ts',
  'test/integration/audit*.test.ts',
  // What follows the audit stream, and the registration and rotation races.
  'test/integration/events.test.ts',
  'test/integration/notifications.test.ts',
  'test/integration/compliance.test.ts',
  'test/integration/concurrency.test.ts',
  'test/integration/downstream-user-claims.test.ts',
  'test/integration/clone-adoption.test.ts',
  // Scheduling: the due-time index is an index over many owners, in a slot of its own.
  'test/integration/due-index.test.ts',
  'test/integration/scheduling.test.ts',
  // Dual control: one key per approval, changed by check-and-set scripts on that key alone.
  'test/integration/approvals.test.ts',
  // Rekey: a walk of every master's secrets, each rewrap a check-and-set script on one key.
  'test/integration/rekey.test.ts',
];

export default defineConfig({
  test: {
    globalSetup: ['test/support/global-setup.ts', 'test/support/cluster-setup.ts'],
    include: CLUSTER_SUITES,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
  },
});
