/**
 * vitest globalSetup: one password-checking PostgreSQL server for the whole run.
 * Tests read it with `inject('pg')` (see the ProvidedContext augmentation below).
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { TestProject } from 'vitest/node';
import { type PgConnectionInfo, startPasswordPostgres } from './postgres-cluster.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    pg: PgConnectionInfo;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  // The web console (/ui), built once for the run as `npm start` builds it (only when missing or stale): every
  // Keyturn a test starts serves it, and the browser tests drive it.
  execFileSync(process.execPath, ['scripts/build-console.mjs', '--if-stale'], {
    cwd: fileURLToPath(new URL('../..', import.meta.url)),
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const server = await startPasswordPostgres();
  const { host, port, database, adminUser, adminPassword, source } = server;
  project.provide('pg', { host, port, database, adminUser, adminPassword, source });
  return async () => {
    await server.stop();
  };
}
