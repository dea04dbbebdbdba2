// Acceptance (issue 6): the audit stream is hash-chained and signed at checkpoints. Tampering with the stream in
// Redis, in each way an attacker with write access could (change a field, delete an event, reorder two, insert
// one, replace a checkpoint, rewrite a stretch with recomputed hashes), is found, and verification names the first
// bad event; an untouched chain of 100,000 events verifies, and the test prints how long that took.

import { generateKeyPairSync } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventDigest, linkHash, signCheckpoint } from '../../src/audit/chain.ts';
import type { RedisClient } from '../../src/redis/client.ts';
import {
  appendEvents,
  type Entry,
  editEvent,
  idBetween,
  newSealer,
  rewriteStream,
  sealedChain,
  type TestChain,
} from '../support/audit-chain.ts';
import { dropPrefix, testRedis } from '../support/harness.ts';

let redis: RedisClient;
const prefixes: string[] = [];

beforeAll(() => {
  redis = testRedis();
});
afterAll(async () => {
  for (const p of prefixes) await dropPrefix(p);
  redis.disconnect();
});

async function chain(n = 100, options: Parameters<typeof sealedChain>[2] = {}): Promise<TestChain> {
  const c = await sealedChain(redis, n, options);
  prefixes.push(c.prefix);
  return c;
}

const field = (fields: string[], name: string) => fields[fields.indexOf(name) + 1]!;

describe('an untouched chain', () => {
  it('verifies, signed to its end by checkpoints every 20 events', async () => {
    const c = await chain();
    const result = await c.trail.verify();
    expect(result).toMatchObject({
      ok: true,
      count: 100,
      from: { seq: 1, id: c.ids[0] },
      to: { seq: 100, id: c.ids[99] },
      signedThrough: { n: 5, seq: 100, id: c.ids[99] },
      unsigned: 0,
      checkpoints: 5,
      pending: 0,
    });
    expect(result.firstBad).toBeUndefined();
  });

  it('reports events appended after the sealed head as pending, not as bad', async () => {
    const c = await chain(30);
    await redis.xadd(
      c.keys.audit(),
      '*',
      'e',
      JSON.stringify({ time: new Date().toISOString(), actor: 'a', action: 'x.y', outcome: 'success' }),
    );
    const result = await c.trail.verify();
    expect(result).toMatchObject({ ok: true, count: 30, pending: 1, unsigned: 0 });
  });

  it('verifies a chain of 100,000 events and says how long it took', async () => {
    const c = await chain(0);
    const appendStart = performance.now();
    await appendEvents(redis, c.keys, 100_000, 0);
    const appendMs = performance.now() - appendStart;
    const sealer = newSealer(redis, c.keys, c.trail, c.privateKey, { batch: 1000, checkpointEvents: 1000 });
    const sealStart = performance.now();
    await sealer.drain();
    const sealMs = performance.now() - sealStart;
    const verifyStart = performance.now();
    const result = await c.trail.verify();
    const verifyMs = performance.now() - verifyStart;
    expect(result).toMatchObject({ ok: true, count: 100_000, unsigned: 0, checkpoints: 100 });
    console.log(
      `100,000 events: appended in ${appendMs.toFixed(0)} ms (pipelined), sealed in ${sealMs.toFixed(0)} ms, verified in ${verifyMs.toFixed(0)} ms (${Math.round(100_000 / (verifyMs / 1000))} events/s)`,
    );
  }, 120_000);
});

describe('tampering with the stream is found, and the first bad event named', () => {
  it('a changed field', async () => {
    const c = await chain();
    await rewriteStream(redis, c.keys.audit(), (entries) =>
      entries.map((e, i) => (i === 36 ? editEvent(e, (ev) => (ev.actor = 'someone-else')) : e)),
    );
    const { ok, firstBad, count } = await c.trail.verify();
    expect(ok).toBe(false);
    expect(firstBad).toMatchObject({ kind: 'altered', id: c.ids[36], seq: 37 });
    expect(count).toBe(36);
  });

  it('a deleted event (from the stream alone, and with its chain entry)', async () => {
    const c = await chain();
    await redis.xdel(c.keys.audit(), c.ids[36]!);
    expect((await c.trail.verify()).firstBad).toMatchObject({ kind: 'missing', seq: 37, id: c.ids[37] });
    await redis.xdel(c.keys.auditChain(), c.ids[36]!);
    expect((await c.trail.verify()).firstBad).toMatchObject({ kind: 'missing', seq: 37, id: c.ids[37] });
  });

  it('two events reordered', async () => {
    const c = await chain();
    // Stream ids only grow, so reordering means swapping what two entries hold.
    await rewriteStream(redis, c.keys.audit(), (entries) => {
      const copy = [...entries];
      copy[36] = [entries[36]![0], entries[37]![1]];
      copy[37] = [entries[37]![0], entries[36]![1]];
      return copy;
    });
    expect((await c.trail.verify()).firstBad).toMatchObject({ kind: 'reordered', id: c.ids[36], seq: 37 });
  });

  it('two events reordered together with their chain entries', async () => {
    const c = await chain();
    for (const key of [c.keys.audit(), c.keys.auditChain()]) {
      await rewriteStream(redis, key, (entries) => {
        const copy = [...entries];
        copy[36] = [entries[36]![0], entries[37]![1]];
        copy[37] = [entries[37]![0], entries[36]![1]];
        return copy;
      });
    }
    expect((await c.trail.verify()).firstBad).toMatchObject({ kind: 'reordered', id: c.ids[36] });
  });

  it('an inserted event, with and without a made-up chain entry', async () => {
    const c = await chain();
    const id = idBetween(c.ids[36]!, c.ids[37]!);
    const json = JSON.stringify({
      time: new Date().toISOString(),
      actor: 'intruder',
      action: 'secret.read',
      outcome: 'success',
      credential: 'cred-1',
    });
    await rewriteStream(redis, c.keys.audit(), (entries) => [
      ...entries.slice(0, 37),
      [id, ['e', json]],
      ...entries.slice(37),
    ]);
    expect((await c.trail.verify()).firstBad).toMatchObject({ kind: 'inserted', id });

    // Now with a chain entry that claims position 38 and links to 37 correctly: still inserted.
    const [, link37] = ((await redis.xrange(c.keys.auditChain(), c.ids[36]!, c.ids[36]!)) as Entry[])[0]!;
    const digest = eventDigest({ id, ...JSON.parse(json) });
    const prev = field(link37, 'h');
    await rewriteStream(redis, c.keys.auditChain(), (entries) => [
      ...entries.slice(0, 37),
      [id, ['s', '38', 'd', digest, 'p', prev, 'h', linkHash(38, prev, digest)]],
      ...entries.slice(37),
    ]);
    expect((await c.trail.verify()).firstBad).toMatchObject({ kind: 'inserted', id, seq: 38 });
  });

  it('a replaced checkpoint: signed by another key, or a genuine one moved', async () => {
    const c = await chain();
    const checkpoints = (await redis.xrange(c.keys.auditCheckpoints(), '-', '+')) as Entry[];
    expect(checkpoints.map(([id]) => id)).toEqual([c.ids[19], c.ids[39], c.ids[59], c.ids[79], c.ids[99]]);
    const second = JSON.parse(field(checkpoints[1]![1], 'c'));
    const { privateKey: otherKey } = generateKeyPairSync('ed25519');
    const { sig: _sig, ...body } = second;
    const forged = signCheckpoint(body, otherKey);
    await rewriteStream(redis, c.keys.auditCheckpoints(), (entries) =>
      entries.map((e, i) => (i === 1 ? [e[0], ['c', JSON.stringify(forged)]] : e)),
    );
    const bad = await c.trail.verify();
    expect(bad.firstBad).toMatchObject({ kind: 'checkpoint', id: c.ids[39], seq: 40 });
    expect(bad.firstBad?.reason).toMatch(/signature does not verify/);
    expect(bad.signedThrough?.n).toBe(1);

    // The genuine checkpoint 3 put in 2's place: its signature is fine, but it does not fit there.
    await rewriteStream(redis, c.keys.auditCheckpoints(), (entries) =>
      entries.map((e, i) => (i === 1 ? [e[0], checkpoints[2]![1]] : e)),
    );
    expect((await c.trail.verify()).firstBad).toMatchObject({ kind: 'checkpoint', id: c.ids[59] });
  });

  it('a stretch rewritten with recomputed hashes is caught by the next signed checkpoint', async () => {
    const c = await chain();
    // Change event 37 and recompute its digest and every hash after it, as someone who knows the scheme would.
    await rewriteStream(redis, c.keys.audit(), (entries) =>
      entries.map((e, i) => (i === 36 ? editEvent(e, (ev) => (ev.outcome = 'failure')) : e)),
    );
    const raw = (await redis.xrange(c.keys.audit(), '-', '+')) as Entry[];
    await rewriteStream(redis, c.keys.auditChain(), (entries) => {
      let prev = field(entries[35]![1], 'h');
      return entries.map((e, i) => {
        if (i < 36) return e;
        const digest = eventDigest({ id: e[0], ...JSON.parse(field(raw[i]![1], 'e')) });
        const hash = linkHash(i + 1, prev, digest);
        const out: Entry = [e[0], ['s', String(i + 1), 'd', digest, 'p', prev, 'h', hash]];
        prev = hash;
        return out;
      });
    });
    const result = await c.trail.verify();
    // Checkpoint 1 (seq 20) still holds; checkpoint 2 (seq 40) no longer matches: seq 21 is the first event not
    // vouched for by a valid signature.
    expect(result.firstBad).toMatchObject({ kind: 'rewritten', seq: 21, id: c.ids[20] });
    expect(result.firstBad?.reason).toMatch(/checkpoint 2/);
  });
});

describe('concurrent sealers', () => {
  it('never fork the chain: four sealers racing while events arrive make one chain', async () => {
    const c = await chain(0);
    const sealers = [0, 1, 2, 3].map(() => newSealer(redis, c.keys, c.trail, c.privateKey, { batch: 7 }));
    let appending = true;
    const appended = (async () => {
      for (let i = 0; i < 400; i++) {
        await redis.xadd(
          c.keys.audit(),
          '*',
          'e',
          JSON.stringify({
            time: new Date().toISOString(),
            actor: 'a',
            action: 'x.y',
            outcome: 'success',
            details: { n: i },
          }),
        );
      }
      appending = false;
    })();
    await Promise.all(
      sealers.map(async (s) => {
        while (appending) {
          await s.sealOnce();
          await s.checkpointIfDue();
        }
      }),
    );
    await appended;
    await sealers[0]!.drain();
    const result = await c.trail.verify();
    expect(result).toMatchObject({ ok: true, count: 400, unsigned: 0 });
    const chainEntries = (await redis.xrange(c.keys.auditChain(), '-', '+')) as Entry[];
    expect(chainEntries.map(([, f]) => Number(field(f, 's')))).toEqual(
      Array.from({ length: 400 }, (_, i) => i + 1),
    );
  });
});
