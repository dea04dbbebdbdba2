// Helpers for audit chain tests: a chain of made-up events on a fresh prefix, sealed by a sealer the test drives,
// and the tampering an attacker with write access to Redis could do.
import { generateKeyPairSync, type KeyObject, randomBytes } from 'node:crypto';
import { AuditSealer, type SealerSettings } from '../../src/audit/sealer.ts';
import { AuditTrail } from '../../src/audit/trail.ts';
import { systemClock } from '../../src/clock.ts';
import { createLogger } from '../../src/logging/logger.ts';
import type { RedisClient } from '../../src/redis/client.ts';
import type { RedisKeys } from '../../src/registry/keys.ts';
import { testKeys } from './harness.ts';

export type Entry = [string, string[]];

export interface TestChain {
  prefix: string;
  keys: RedisKeys;
  trail: AuditTrail;
  sealer: AuditSealer;
  /** The events' stream ids, oldest first. */
  ids: string[];
  publicKey: KeyObject;
  privateKey: KeyObject;
}

const ACTIONS = [
  'credential.created',
  'rotation.requested',
  'rotation.succeeded',
  'secret.read',
  'auth.denied',
];

export const quietLogger = createLogger({ level: 'silent', format: 'json' });

export function eventJson(i: number, time: number): string {
  return JSON.stringify({
    time: new Date(time).toISOString(),
    actor: i % 3 === 0 ? 'admin' : `svc-${i % 7}`,
    action: ACTIONS[i % ACTIONS.length],
    outcome: i % 11 === 0 ? 'failure' : 'success',
    credential: `cred-${i % 13}`,
    details: { n: i, note: i % 5 === 0 ? 'with, a "quoted" comma' : null },
  });
}

/** Appends `n` events with explicit ids `spacingMs` apart (gaps where a test can insert one), ending ~now. */
export async function appendEvents(
  redis: RedisClient,
  keys: RedisKeys,
  n: number,
  spacingMs: number,
): Promise<string[]> {
  const base = Date.now() - n * spacingMs - 5000;
  const ids: string[] = [];
  for (let from = 0; from < n; from += 5000) {
    const pipeline = redis.pipeline();
    for (let i = from; i < Math.min(n, from + 5000); i++) {
      const id = spacingMs > 0 ? `${base + i * spacingMs}-0` : `${base}-${i}`;
      ids.push(id);
      pipeline.xadd(keys.audit(), id, 'e', eventJson(i + 1, base + i * spacingMs));
    }
    await pipeline.exec();
  }
  return ids;
}

export function newSealer(
  redis: RedisClient,
  keys: RedisKeys,
  trail: AuditTrail,
  privateKey: KeyObject,
  settings: Partial<SealerSettings> = {},
): AuditSealer {
  return new AuditSealer({
    redis,
    keys,
    store: trail.store,
    signer: privateKey,
    publicKey: trail.publicKeys[0]!,
    settings: { checkpointEvents: 20, checkpointIntervalMs: 3_600_000, batch: 10, ...settings },
    clock: systemClock,
    logger: quietLogger,
  });
}

/** A sealed chain of `n` events (checkpoints every 20 by default) on its own prefix. */
export async function sealedChain(
  redis: RedisClient,
  n: number,
  options: { spacingMs?: number; settings?: Partial<SealerSettings> } = {},
): Promise<TestChain> {
  const prefix = `kt-test-${randomBytes(4).toString('hex')}`;
  const keys = testKeys(prefix);
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const trail = new AuditTrail(redis, keys, [publicKey]);
  const ids = await appendEvents(redis, keys, n, options.spacingMs ?? 10);
  const sealer = newSealer(redis, keys, trail, privateKey, options.settings);
  await sealer.drain();
  return { prefix, keys, trail, sealer, ids, publicKey, privateKey };
}

/** Rewrites a stream entry by entry, keeping every id the function returns (as an attacker rebuilding it would). */
export async function rewriteStream(
  redis: RedisClient,
  key: string,
  change: (entries: Entry[]) => Entry[],
): Promise<void> {
  const entries = (await redis.xrange(key, '-', '+')) as Entry[];
  const changed = change(entries.map(([id, f]) => [id, [...f]]));
  const pipeline = redis.pipeline().del(key);
  for (const [id, fields] of changed) pipeline.xadd(key, id, ...fields);
  await pipeline.exec();
}

/** The `e` JSON of an entry, changed by `fn`. */
export function editEvent(entry: Entry, fn: (event: Record<string, unknown>) => void): Entry {
  const fields = [...entry[1]];
  const i = fields.indexOf('e') + 1;
  const event = JSON.parse(fields[i]!) as Record<string, unknown>;
  fn(event);
  fields[i] = JSON.stringify(event);
  return [entry[0], fields];
}

/** A stream id halfway between two ids whose milliseconds differ. */
export function idBetween(a: string, b: string): string {
  const am = Number(a.split('-')[0]);
  const bm = Number(b.split('-')[0]);
  if (bm - am < 2) throw new Error(`no room between ${a} and ${b}`);
  return `${Math.floor((am + bm) / 2)}-0`;
}
