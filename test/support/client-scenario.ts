// Issue 13's acceptance scenario for the TypeScript client's pools (test/integration/client.test.ts runs it with a few
// rotations, test/slow/client-pools.test.ts with 50): a steady query load through a pool that follows rotations, with
// every query counted and every failure kept.
import { expect } from 'vitest';
import type { KeyturnClient, RotatingPool } from '../../src/client/index.ts';
import { type Keyturn, waitForRotation } from './harness.ts';

export interface LoadOutcome {
  queries: number;
  failures: string[];
  versions: Set<string>;
  closedPools: number;
  ms: number;
}

/**
 * Runs `workers` loops of `SELECT 1` on `pool` while credential `id` is rotated `rotations` times, one after another;
 * returns what the load saw.
 */
export async function loadThroughRotations(
  kt: Keyturn,
  pool: RotatingPool<(sql: string, values?: unknown[]) => Promise<unknown>>,
  id: string,
  rotations: number,
  workers = 4,
): Promise<LoadOutcome> {
  const started = Date.now();
  let running = true;
  const out: LoadOutcome = { queries: 0, failures: [], versions: new Set(), closedPools: 0, ms: 0 };
  const loop = async () => {
    while (running) {
      try {
        await pool.query('SELECT 1');
        out.queries += 1;
        out.versions.add(pool.version);
      } catch (err) {
        out.failures.push(`${(err as { code?: string }).code ?? ''} ${(err as Error).message}`);
      }
    }
  };
  const loops = Array.from({ length: workers }, loop);
  try {
    for (let i = 0; i < rotations; i++) {
      const res = await kt.api('POST', `/v1/credentials/${id}/rotate`);
      expect(res.status, res.text).toBe(202);
      const done = await waitForRotation(kt, res.body.rotationId);
      expect(done.status, JSON.stringify(done.error ?? {})).toBe('succeeded');
      // Some load on each version before the next rotation.
      const before = out.queries;
      while (out.queries < before + 20) await new Promise((r) => setTimeout(r, 10));
    }
  } finally {
    running = false;
    await Promise.all(loops);
  }
  out.closedPools = pool.closedPools;
  out.ms = Date.now() - started;
  return out;
}

/** The pool's version is the credential's current one (it followed the last rotation). */
export async function followsCurrent(client: KeyturnClient, pool: { version: string }, id: string) {
  const current = await client.getSecret(id, { fresh: true });
  for (let i = 0; i < 100 && pool.version !== current.version; i++)
    await new Promise((r) => setTimeout(r, 50));
  expect(pool.version).toBe(current.version);
}
