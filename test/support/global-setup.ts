/**
 * vitest globalSetup: one password-checking PostgreSQL server for the whole run.
 * Tests read it with `inject('pg')` (see the ProvidedContext augmentation below).
 */
import type { TestProject } from 'vitest/node';
import { type PgConnectionInfo, startPasswordPostgres } from './postgres-cluster.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    pg: PgConnectionInfo;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const server = await startPasswordPostgres();
  const { host, port, database, adminUser, adminPassword, source } = server;
  project.provide('pg', { host, port, database, adminUser, adminPassword, source });
  return async () => {
    await server.stop();
  };
}
