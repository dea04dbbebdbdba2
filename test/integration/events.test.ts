// GET /v1/events: the server-sent rotation events. Who sees what (a reader only its credentials, an auditor all),
// the stream's headers, resuming with Last-Event-ID (exactly the missed events, no duplicate), heartbeats, the
// subscriber limit, a Redis blip under the follower, a client that does not read, and a prompt shutdown.

import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256Hex } from '../../src/crypto/tokens.ts';
import { EventHub, MAX_BUFFERED_BYTES } from '../../src/events/event-hub.ts';
import { createLogger } from '../../src/logging/logger.ts';
import { duplicateClient } from '../../src/redis/client.ts';
import {
  clientList,
  dropPrefix,
  importCredential,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  testEnv,
  testKeys,
  testRedis,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';
import { openSse, type SseStream } from '../support/sse.ts';

const HEARTBEAT_MS = 300;
const MAX_CLIENTS = 6;
const tokens = {
  operator: randomBytes(32).toString('base64url'),
  auditor: randomBytes(32).toString('base64url'),
  readerA: randomBytes(32).toString('base64url'),
  readerB: randomBytes(32).toString('base64url'),
};
type Who = keyof typeof tokens | 'admin';

let dir: string;
let env: ReturnType<typeof testEnv>;
let kt: Keyturn;
let credA = '';
let credB = '';
/** Every password a rotation made or a test read: none may ever be in an event stream. */
const secrets = new Set<string>();
const streams: SseStream[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kt-events-'));
  const file = join(dir, 'tokens.yaml');
  await writeFile(
    file,
    [
      'tokens:',
      `  - {name: ops, sha256: ${sha256Hex(tokens.operator)}, roles: [operator]}`,
      `  - {name: audit-team, sha256: ${sha256Hex(tokens.auditor)}, roles: [auditor]}`,
      // Bound by label, so that the per-event filter has to look the credential up.
      `  - {name: reader-a, sha256: ${sha256Hex(tokens.readerA)}, roles: [reader], labels: {team: a}}`,
      `  - {name: reader-b, sha256: ${sha256Hex(tokens.readerB)}, roles: [reader], credentials: ["evb-*"]}`,
      '',
    ].join('\n'),
  );
  env = testEnv({
    KEYTURN_TOKENS_FILE: file,
    KEYTURN_EVENTS_HEARTBEAT_MS: String(HEARTBEAT_MS),
    KEYTURN_EVENTS_MAX_CLIENTS: String(MAX_CLIENTS),
    KEYTURN_CORS_ORIGINS: 'https://console.example.com',
  });
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
  const connection = await registerPgConnection(kt);
  const a = await importCredential(kt, connection, { idPrefix: 'eva', extra: { labels: { team: 'a' } } });
  const b = await importCredential(kt, connection, { idPrefix: 'evb', extra: { labels: { team: 'b' } } });
  credA = a.id;
  credB = b.id;
  secrets.add(a.password).add(b.password);
});

afterAll(async () => {
  await Promise.all(streams.map((s) => s.close()));
  await kt?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
  if (env) await dropPrefix(env.prefix);
});

/** A rotation.succeeded audit event as the engine writes it, for a credential that does not exist. */
function madeUpRotation(rotation: string, username: string) {
  return {
    time: new Date().toISOString(),
    actor: 'test',
    action: 'rotation.succeeded',
    outcome: 'success',
    credential: 'made-up',
    rotation,
    details: { version: rotation, username },
  };
}

function bearer(who: Who): string {
  return who === 'admin' ? env.adminToken : tokens[who];
}

async function subscribe(
  who: Who,
  options: { query?: string; lastEventId?: string; headers?: Record<string, string> } = {},
): Promise<SseStream> {
  const stream = await openSse(`${kt.url}/v1/events${options.query ? `?${options.query}` : ''}`, {
    headers: { authorization: `Bearer ${bearer(who)}`, ...options.headers },
    ...(options.lastEventId === undefined ? {} : { lastEventId: options.lastEventId }),
  });
  streams.push(stream);
  return stream;
}

/** Rotates now, waits for the end, and remembers the new password. */
async function rotate(id: string): Promise<{ id: string; status: string }> {
  const res = await kt.api('POST', `/v1/credentials/${id}/rotate`);
  expect(res.status, res.text).toBe(202);
  const rotation = await waitForRotation(kt, res.body.rotationId);
  expect(rotation.status).toBe('succeeded');
  const secret = await kt.api('GET', `/v1/credentials/${id}/secret`);
  secrets.add(secret.body.password);
  return rotation;
}

interface EventData {
  credential: string;
  rotation: string;
  version: string | null;
  outcome: string;
  username: string | null;
  time: string;
}
const rotationsIn = (stream: SseStream): EventData[] =>
  stream.events('rotation').map((m) => JSON.parse(m.data) as EventData);

function expectNoSecret(stream: SseStream): void {
  for (const secret of secrets)
    expect(stream.raw.includes(secret), 'a password in the event stream').toBe(false);
  expect(stream.raw).not.toMatch(/password/i);
}

describe('GET /v1/events', () => {
  it('answers 401 without a valid token, in the error shape', async () => {
    for (const authorization of [undefined, 'Bearer not-a-token']) {
      const stream = await openSse(`${kt.url}/v1/events`, {
        headers: authorization ? { authorization } : {},
      });
      expect(stream.status).toBe(401);
      expect(JSON.parse(stream.raw).error.code).toBe('unauthorized');
    }
  });

  it('refuses bad input with a 400 naming it', async () => {
    for (const [query, lastEventId, field] of [
      ['credential=..%2F..', undefined, 'querystring.credential'],
      ['colour=red', undefined, 'querystring.colour is not a known field'],
      ['', 'yesterday', 'headers.last-event-id'],
      ['', '99999999999999999999-0', 'headers.last-event-id'],
    ] as const) {
      const stream = await openSse(`${kt.url}/v1/events?${query}`, {
        headers: { authorization: `Bearer ${env.adminToken}` },
        ...(lastEventId ? { lastEventId } : {}),
      });
      expect(stream.status, stream.raw).toBe(400);
      expect(JSON.parse(stream.raw).error.message).toContain(field);
    }
  });

  it('streams text/event-stream with the security headers, a retry line and a resume point', async () => {
    const stream = await subscribe('auditor', { headers: { origin: 'https://console.example.com' } });
    expect(stream.status).toBe(200);
    // Set by the CORS hook on the reply, which a hijacked answer would lose without the route copying it.
    expect(stream.headers.get('access-control-allow-origin')).toBe('https://console.example.com');
    expect(stream.headers.get('content-type')).toBe('text/event-stream; charset=utf-8');
    expect(stream.headers.get('cache-control')).toBe('no-store');
    expect(stream.headers.get('x-accel-buffering')).toBe('no');
    expect(stream.headers.get('x-content-type-options')).toBe('nosniff');
    expect(stream.headers.get('content-security-policy')).toBe("default-src 'none';frame-ancestors 'none'");
    expect(stream.headers.get('x-frame-options')).toBe('DENY');
    expect(stream.headers.get('x-ratelimit-limit')).toBeTruthy();
    await stream.until('the retry line and the first id', () => stream.retry && stream.lastEventId);
    expect(stream.retry).toBe(2000);
    await stream.close();
  });

  it('a reader sees only the credentials bound to it; an auditor and an operator see all', async () => {
    const readerA = await subscribe('readerA');
    const readerB = await subscribe('readerB');
    const auditor = await subscribe('auditor');
    const operator = await subscribe('operator', { query: `credential=${credB}` });
    const done = [await rotate(credA), await rotate(credB), await rotate(credA), await rotate(credB)];
    await auditor.until('4 rotation events', () => rotationsIn(auditor).length >= 4);
    await readerA.until('2 rotation events', () => rotationsIn(readerA).length >= 2);
    await readerB.until('2 rotation events', () => rotationsIn(readerB).length >= 2);
    await operator.until('2 rotation events', () => rotationsIn(operator).length >= 2);
    // The last event any of them gets arrived: give a wrong extra event the time to show up too (only waiting can
    // show that none comes: nothing else can work for an absence).
    await new Promise((r) => setTimeout(r, 300));

    expect(rotationsIn(auditor).map((e) => e.rotation)).toEqual(done.map((r) => r.id));
    expect(rotationsIn(readerA).map((e) => e.rotation)).toEqual([done[0]?.id, done[2]?.id]);
    expect(rotationsIn(readerB).map((e) => e.rotation)).toEqual([done[1]?.id, done[3]?.id]);
    expect(rotationsIn(operator).map((e) => e.rotation)).toEqual([done[1]?.id, done[3]?.id]);

    const first = rotationsIn(readerA)[0] as EventData;
    const secret = await kt.api('GET', `/v1/credentials/${credA}/secret`);
    expect(Object.keys(first).sort()).toEqual([
      'credential',
      'outcome',
      'rotation',
      'time',
      'username',
      'version',
    ]);
    expect(first).toMatchObject({ credential: credA, version: done[0]?.id, outcome: 'succeeded' });
    expect(first.username).toBe(secret.body.username);
    expect(Date.parse(first.time)).toBeGreaterThan(Date.now() - 60_000);
    // Each rotation event carries its audit stream id.
    const ids = auditor.events('rotation').map((m) => m.lastEventId);
    expect(ids.every((id) => /^\d+-\d+$/.test(id))).toBe(true);
    expect(new Set(ids).size).toBe(4);
    for (const s of [readerA, readerB, auditor, operator]) {
      expectNoSecret(s);
      await s.close();
    }
  });

  it("?steps=true adds each step of a rotation as it lands (the console's live progress); without it, none", async () => {
    const withSteps = await subscribe('readerA', { query: `credential=${credA}&steps=true` });
    const without = await subscribe('readerA', { query: `credential=${credA}` });
    const other = await subscribe('readerB', { query: 'steps=true' });
    await Promise.all([withSteps, without, other].map((s) => s.until('the first id', () => s.lastEventId)));
    const done = await rotate(credA);
    await withSteps.until('the rotation event', () => rotationsIn(withSteps).length >= 1);
    await without.until('the rotation event', () => rotationsIn(without).length >= 1);
    const steps = withSteps.events('step').map((m) => JSON.parse(m.data));
    // The steps, then the rotation's end, in stream order; finish is the rotation event itself.
    expect(steps.map((s) => `${s.step} ${s.outcome} ${s.attempt}`)).toEqual([
      'create succeeded 1',
      'set succeeded 1',
      'test succeeded 1',
    ]);
    expect(steps.every((s) => s.rotation === done.id && s.credential === credA)).toBe(true);
    const order = withSteps.messages.filter((m) => m.event !== 'message').map((m) => m.event);
    expect(order.slice(-4)).toEqual(['step', 'step', 'step', 'rotation']);
    expect(without.events('step')).toEqual([]);
    // A reader's step events are filtered like its rotation events: B sees nothing of A.
    expect(other.events('step')).toEqual([]);
    expectNoSecret(withSteps);
    await Promise.all([withSteps, without, other].map((s) => s.close()));
  });

  it('a reader asking for a credential not bound to it gets 403; a glob only shows its own', async () => {
    const denied = await subscribe('readerA', { query: `credential=${credB}` });
    expect(denied.status).toBe(403);
    expect(JSON.parse(denied.raw).error.code).toBe('forbidden');
    const glob = await subscribe('readerA', { query: 'credential=ev*' });
    expect(glob.status).toBe(200);
    const rotated = [await rotate(credB), await rotate(credA)];
    await glob.until('A’s rotation', () => rotationsIn(glob).length >= 1);
    // A wrong extra event (a duplicate, another credential's) would come after the last expected one, and only waiting
    // can show that none comes: nothing else can work for an absence.
    await new Promise((r) => setTimeout(r, 200));
    expect(rotationsIn(glob).map((e) => e.rotation)).toEqual([rotated[1]?.id]);
    await glob.close();
  });

  it('Last-Event-ID replays exactly the events missed while disconnected, then goes on live', async () => {
    const first = await subscribe('readerA');
    const before = await rotate(credA);
    await first.until('the event', () => rotationsIn(first).length === 1);
    const resumeFrom = first.lastEventId;
    await first.close();

    const missed = [await rotate(credA), await rotate(credB), await rotate(credA)];
    const again = await subscribe('readerA', { lastEventId: resumeFrom });
    await again.until('the two missed events', () => rotationsIn(again).length >= 2);
    const after = await rotate(credA);
    await again.until('the live event', () => rotationsIn(again).length >= 3);
    // A wrong extra event (a duplicate, another credential's) would come after the last expected one, and only waiting
    // can show that none comes: nothing else can work for an absence.
    await new Promise((r) => setTimeout(r, 200));
    expect(rotationsIn(again).map((e) => e.rotation)).toEqual([missed[0]?.id, missed[2]?.id, after.id]);
    expect(rotationsIn(again).map((e) => e.rotation)).not.toContain(before.id);
    expect(again.events('missed')).toEqual([]);
    await again.close();
  });

  it('a reader never gets the events of a credential deleted since; an auditor does', async () => {
    const connection = (await kt.api('GET', `/v1/credentials/${credB}`)).body.connection as string;
    const gone = await importCredential(kt, connection, { idPrefix: 'evb' });
    const reader = await subscribe('readerB');
    const auditor = await subscribe('auditor');
    await reader.until('a resume point', () => reader.lastEventId);
    await auditor.until('a resume point', () => auditor.lastEventId);
    const from = { reader: reader.lastEventId, auditor: auditor.lastEventId };
    await Promise.all([reader.close(), auditor.close()]);
    const rotated = await rotate(gone.id);
    const deleted = await kt.api('DELETE', `/v1/credentials/${gone.id}`);
    expect(deleted.status, deleted.text).toBe(204);
    const kept = await rotate(credB);
    const readerAgain = await subscribe('readerB', { lastEventId: from.reader });
    const auditorAgain = await subscribe('auditor', { lastEventId: from.auditor });
    await readerAgain.until('B’s event', () => rotationsIn(readerAgain).length >= 1);
    await auditorAgain.until('both events', () => rotationsIn(auditorAgain).length >= 2);
    expect(rotationsIn(readerAgain).map((e) => e.rotation)).toEqual([kept.id]);
    expect(rotationsIn(auditorAgain).map((e) => e.rotation)).toEqual([rotated.id, kept.id]);
    await Promise.all([readerAgain.close(), auditorAgain.close()]);
  });

  it('a Last-Event-ID the stream does not hold gives a "missed" event, then live events', async () => {
    const stream = await subscribe('readerA', { lastEventId: '1-0' });
    const missed = await stream.nth('missed', 1);
    expect(JSON.parse(missed.data).reason).toMatch(/1-0.*may have been missed/);
    const live = await rotate(credA);
    await stream.until('the live event', () => rotationsIn(stream).length === 1);
    expect(rotationsIn(stream)[0]?.rotation).toBe(live.id);
    await stream.close();
  });

  it(`sends a keep-alive comment every ${HEARTBEAT_MS} ms, moving the resume point along`, async () => {
    const stream = await subscribe('readerB');
    const opened = performance.now();
    await stream.until(
      '3 heartbeats',
      () => stream.comments.filter((c) => c.text === 'keep-alive').length >= 3,
    );
    const beats = stream.comments
      .filter((c) => c.text === 'keep-alive')
      .map((c) => Math.round(c.at - opened));
    console.log(`heartbeats at ${beats.join(', ')} ms after connecting (interval ${HEARTBEAT_MS} ms)`);
    expect(beats[2]).toBeLessThan(4 * HEARTBEAT_MS + 500);
    // An event of another credential moves the id a heartbeat carries, though the reader never sees the event.
    const idBefore = stream.lastEventId;
    await rotate(credA);
    await stream.until('a later id', () => stream.lastEventId !== idBefore && stream.lastEventId);
    expect(rotationsIn(stream)).toEqual([]);
    await stream.close();
  });

  it('follows on after its Redis connection is killed, from where it was', async () => {
    const stream = await subscribe('auditor');
    try {
      const name = `${env.prefix}:events`;
      const follower = (await clientList()).find((c) => c.line.includes(`name=${name} `));
      expect(follower, `a client named ${name}`).toBeTruthy();
      await follower?.kill();
      const during = await rotate(credB);
      await stream.until('the event appended while the follower was away', () =>
        rotationsIn(stream).some((e) => e.rotation === during.id),
      );
    } finally {
      await stream.close();
    }
  });

  it(`serves at most ${MAX_CLIENTS} streams; one more gets 503 with Retry-After`, async () => {
    const open = await waitFor('the earlier streams to be gone', async () =>
      kt.runtime.ctx.events.size === 0 ? true : undefined,
    );
    expect(open).toBe(true);
    const full: SseStream[] = [];
    for (let i = 0; i < MAX_CLIENTS; i++) full.push(await subscribe('readerB'));
    expect(full.map((s) => s.status)).toEqual(Array(MAX_CLIENTS).fill(200));
    const refused = await subscribe('readerB');
    expect(refused.status).toBe(503);
    expect(refused.headers.get('retry-after')).toBe('5');
    expect(JSON.parse(refused.raw).error.message).toContain('KEYTURN_EVENTS_MAX_CLIENTS');
    await (full[0] as SseStream).close();
    await waitFor('a free slot', async () => kt.runtime.ctx.events.size < MAX_CLIENTS || undefined);
    const admitted = await subscribe('readerB');
    expect(admitted.status).toBe(200);
    await Promise.all([...full, admitted].map((s) => s.close()));
  });

  it('a resume in the middle of a burst of events gets every one of them once, in order', async () => {
    const before = await subscribe('admin');
    await before.until('a resume point', () => before.lastEventId);
    const resumeFrom = before.lastEventId;
    await before.close();
    const redis = testRedis();
    const written: string[] = [];
    let again: SseStream | undefined;
    try {
      // 300 events in 30 bursts; the client reconnects after the 10th, while the others are still coming.
      for (let burst = 0; burst < 30; burst++) {
        const batch = redis.pipeline();
        for (let i = 0; i < 10; i++) {
          const rotation = `burst-${burst}-${i}`;
          written.push(rotation);
          batch.xadd(testKeys(env.prefix).audit(), '*', 'e', JSON.stringify(madeUpRotation(rotation, 'u')));
        }
        await batch.exec();
        if (burst === 10) again = await subscribe('admin', { lastEventId: resumeFrom });
        // Paces the bursts (the load's shape); no assertion waits on it.
        await new Promise((r) => setTimeout(r, 5));
      }
    } finally {
      redis.disconnect();
    }
    const stream = again as SseStream;
    await stream.until('all 300 events', () => rotationsIn(stream).length >= written.length);
    // A wrong extra event (a duplicate, another credential's) would come after the last expected one, and only waiting
    // can show that none comes: nothing else can work for an absence.
    await new Promise((r) => setTimeout(r, 200));
    expect(rotationsIn(stream).map((e) => e.rotation)).toEqual(written);
    expect(stream.events('missed')).toEqual([]);
    await stream.close();
  });

  // Last: it writes thousands of made-up events to the stream.
  it('disconnects a client that stops reading instead of buffering for it', async () => {
    await waitFor(
      'the earlier streams to be gone',
      async () => kt.runtime.ctx.events.size === 0 || undefined,
    );
    const { port } = new URL(kt.url);
    const socket: Socket = connect(Number(port), '127.0.0.1');
    let head = '';
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.on('data', (chunk) => {
        head += String(chunk);
        if (head.includes('\r\n\r\n')) {
          socket.pause();
          resolve();
        }
      });
      socket.write(
        `GET /v1/events HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer ${env.adminToken}\r\naccept: text/event-stream\r\n\r\n`,
      );
    });
    expect(head).toMatch(/^HTTP\/1.1 200/);
    await waitFor(
      'the slow client to be subscribed',
      async () => kt.runtime.ctx.events.size === 1 || undefined,
    );
    // Big made-up events, so that the socket buffers fill quickly; written as the engine writes them.
    const redis = testRedis();
    const filler = 'x'.repeat(4000);
    let written = 0;
    try {
      for (let round = 0; round < 40 && kt.runtime.ctx.events.size > 0; round++) {
        const batch = redis.pipeline();
        for (let i = 0; i < 500; i++) {
          batch.xadd(
            testKeys(env.prefix).audit(),
            '*',
            'e',
            JSON.stringify(madeUpRotation(`filler-${round}-${i}`, filler)),
          );
        }
        await batch.exec();
        written += 500;
        // Paces the filler rounds (the load's shape); no assertion waits on it.
        await new Promise((r) => setTimeout(r, 50));
      }
      await waitFor(
        'the slow client to be dropped',
        async () => kt.runtime.ctx.events.size === 0 || undefined,
        10_000,
      );
    } finally {
      redis.disconnect();
      socket.destroy();
    }
    console.log(
      `slow client dropped after ${written} events of ~${filler.length} bytes (limit ${MAX_BUFFERED_BYTES} bytes buffered in Keyturn)`,
    );
    expect(kt.logs.some((l) => l.includes('disconnecting an event stream client that does not read'))).toBe(
      true,
    );
  });
});

describe('shutdown', () => {
  it('closing the app with subscribers connected ends their streams and the follower promptly', async () => {
    const own = testEnv({ KEYTURN_EVENTS_HEARTBEAT_MS: '60000' });
    const other = await startKeyturn(own);
    try {
      const open = await Promise.all(
        [1, 2, 3].map(() =>
          openSse(`${other.url}/v1/events`, { headers: { authorization: `Bearer ${own.adminToken}` } }),
        ),
      );
      expect(open.map((s) => s.status)).toEqual([200, 200, 200]);
      await Promise.all(open.map((s) => s.until('the first id', () => s.lastEventId || s.retry)));
      const started = performance.now();
      await other.close();
      const ms = performance.now() - started;
      await Promise.all(open.map((s) => s.ended));
      console.log(`closed with 3 subscribers in ${ms.toFixed(0)} ms`);
      expect(ms).toBeLessThan(3000);
      expect(open.map((s) => s.endedBy)).toEqual(['server', 'server', 'server']);
      const list = (await clientList()).map((c) => c.line).join('\n');
      expect(list).not.toContain(`name=${own.prefix}:events `);
    } finally {
      await other.close();
      await dropPrefix(own.prefix);
    }
  });
});

describe('the hub, directly', () => {
  it('queues live events while a slow replay runs: no gap, no duplicate, in stream order', async () => {
    const prefix = `kt-test-hub-${randomBytes(4).toString('hex')}`;
    const audit = testKeys(prefix).audit();
    const redis = testRedis();
    // Replays read through a connection whose XRANGE takes 100 ms: live events surely arrive meanwhile.
    const slow = new Proxy(redis, {
      get(target, name, receiver) {
        if (name === 'xrange') {
          return async (...args: unknown[]) => {
            // The replay's slowed XRANGE (above): it widens the window in which live events arrive; no assertion waits on it.
            await new Promise((r) => setTimeout(r, 100));
            return (target.xrange as (...a: unknown[]) => Promise<unknown>)(...args);
          };
        }
        const value = Reflect.get(target, name, receiver);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    const hub = new EventHub({
      redis: slow,
      connectFollower: () => duplicateClient(redis, { blocking: true }),
      keys: testKeys(prefix),
      registry: { findCredential: async () => null },
      logger: createLogger({ level: 'silent', format: 'json' }),
      settings: { heartbeatMs: 60_000, maxClients: 10 },
    });
    let text = '';
    const res = new Writable({
      write(chunk, _encoding, done) {
        text += String(chunk);
        done();
      },
    });
    const add = (rotation: string) =>
      redis.xadd(audit, '*', 'e', JSON.stringify(madeUpRotation(rotation, 'u')));
    try {
      const first = (await add('r0')) as string;
      for (let i = 1; i <= 5; i++) await add(`r${i}`);
      await hub.ready();
      const subscriber = hub.subscribe({
        principal: { name: 'admin', roles: ['admin'], via: 'admin-token' },
        res: res as never,
      });
      const started = subscriber?.start(first);
      for (let i = 6; i <= 10; i++) await add(`r${i}`);
      await started;
      for (let i = 11; i <= 12; i++) await add(`r${i}`);
      await waitFor('r12 to arrive', async () => text.includes('"rotation":"r12"') || undefined, 5000, 10);
      const got = [...text.matchAll(/"rotation":"(r\d+)"/g)].map((m) => m[1]);
      expect(got).toEqual(Array.from({ length: 12 }, (_, i) => `r${i + 1}`));
    } finally {
      await hub.close();
      redis.disconnect();
      await dropPrefix(prefix);
    }
  });
});
