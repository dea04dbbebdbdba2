// Acceptance (issue 6): 8 processes appending concurrently produce one valid chain with no lost or duplicated
// events. Each process also runs a sealer, as every worker does: they share the work through the sealer lock, hand
// it over as processes exit, and the head check in the sealing script keeps the chain from forking.
import { spawn } from 'node:child_process';
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { afterAll, expect, it } from 'vitest';
import { AuditTrail } from '../../src/audit/trail.ts';
import { newSealer } from '../support/audit-chain.ts';
import { dropPrefix, testEnv, testKeys, testRedis } from '../support/harness.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const PROCESSES = 8;
const EACH = 500;
const env = testEnv();
const redis = testRedis();

afterAll(async () => {
  await dropPrefix(env.prefix);
  redis.disconnect();
});

function appender(index: number): Promise<{ code: number | null; output: string }> {
  const child = spawn(process.execPath, ['test/support/audit-appender.ts'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', ...env.env, APPENDER: String(index), COUNT: String(EACH) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (c) => (output += c));
  child.stderr.on('data', (c) => (output += c));
  return new Promise((resolve) => child.on('exit', (code) => resolve({ code, output })));
}

it(`${PROCESSES} processes appending at once make one valid chain, nothing lost or duplicated`, async () => {
  const started = performance.now();
  const results = await Promise.all(Array.from({ length: PROCESSES }, (_, i) => appender(i)));
  const elapsed = performance.now() - started;
  for (const r of results) expect(r.code, r.output).toBe(0);

  const keys = testKeys(env.prefix);
  const signer = createPrivateKey(env.env.KEYTURN_AUDIT_SIGNING_KEY!);
  const trail = new AuditTrail(redis, keys, [createPublicKey(signer)]);
  await newSealer(redis, keys, trail, signer).drain();
  const result = await trail.verify();
  expect(result).toMatchObject({ ok: true, count: PROCESSES * EACH, unsigned: 0, pending: 0 });

  // Every (process, n) exactly once, each process's events in the order it appended them.
  const seen = new Map<number, number[]>();
  for await (const r of trail.store.records('-', '+')) {
    if (r.type !== 'event') continue;
    const { appender: a, n } = r.details as { appender: number; n: number };
    seen.set(a, [...(seen.get(a) ?? []), n]);
  }
  for (let a = 0; a < PROCESSES; a++) {
    expect(seen.get(a)).toEqual(Array.from({ length: EACH }, (_, n) => n));
  }
  // Interleaved, not one process after another: the appends really were concurrent.
  const order: number[] = [];
  for await (const r of trail.store.records('-', '+'))
    if (r.type === 'event') order.push((r.details as { appender: number }).appender);
  const switches = order.filter((a, i) => i > 0 && a !== order[i - 1]).length;
  expect(switches).toBeGreaterThan(PROCESSES);
  console.log(
    `${PROCESSES} processes × ${EACH} events in ${elapsed.toFixed(0)} ms (process start included); ${result.checkpoints} checkpoints; the appenders' events interleave ${switches} times`,
  );
}, 120_000);
