// Issue 14 guard: every secret read is audited exactly once, with the reader's name and the version it was given,
// before the answer leaves (the read path is now one script and auto-pipelined; its audit append must stay one
// awaited XADD per read, neither dropped, doubled, nor deferred past the answer).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  dropPrefix,
  importCredential,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  type TestEnv,
  testEnv,
  tokensFile,
} from '../support/harness.ts';

let env: TestEnv;
let kt: Keyturn;
let tokens: Awaited<ReturnType<typeof tokensFile>>;
let id: string;

beforeAll(async () => {
  // alice is bound by glob (authorized without reading the credential), bob by label (the credential is read).
  tokens = await tokensFile({
    alice: 'roles: [reader], credentials: ["audit-once-*"]',
    bob: 'roles: [reader], labels: {team: audit-once}',
    carol: 'roles: [reader], credentials: ["other-*"]',
  });
  env = testEnv({ KEYTURN_TOKENS_FILE: tokens.path });
  kt = await startKeyturn(env, { components: ['api'] });
  const connection = await registerPgConnection(kt);
  ({ id } = await importCredential(kt, connection, {
    idPrefix: 'audit-once',
    extra: { labels: { team: 'audit-once' } },
  }));
});
afterAll(async () => {
  await kt?.close();
  await tokens?.remove();
  await dropPrefix(env.prefix);
});

const readAs = (who: 'alice' | 'bob') =>
  kt.api('GET', `/v1/credentials/${id}/secret`, undefined, {
    authorization: `Bearer ${tokens.tokens[who]}`,
  });

async function readEvents() {
  const { events } = await kt.runtime.ctx.audit.read({
    credential: id,
    action: 'secret.read',
    limit: 100_000,
  });
  return events;
}

describe('secret reads and their audit events', () => {
  it('each read is in the trail when its answer arrives, once, with the reader', async () => {
    for (const who of ['alice', 'bob', 'alice'] as const) {
      const before = (await readEvents()).length;
      const res = await readAs(who);
      expect(res.status).toBe(200);
      // No waiting: the event was appended before the answer was sent.
      const events = await readEvents();
      expect(events).toHaveLength(before + 1);
      expect(events.at(-1)).toMatchObject({
        actor: who,
        outcome: 'success',
        details: { version: res.body.version },
      });
    }
  });

  it('N concurrent reads make exactly N events, each naming its reader', async () => {
    const before = await readEvents();
    const n = { alice: 120, bob: 80 };
    const answers = await Promise.all([
      ...Array.from({ length: n.alice }, () => readAs('alice')),
      ...Array.from({ length: n.bob }, () => readAs('bob')),
    ]);
    expect(answers.map((a) => a.status)).toEqual(answers.map(() => 200));
    const added = (await readEvents()).slice(before.length);
    expect(added).toHaveLength(n.alice + n.bob);
    expect(added.filter((e) => e.actor === 'alice')).toHaveLength(n.alice);
    expect(added.filter((e) => e.actor === 'bob')).toHaveLength(n.bob);
    expect(new Set(added.map((e) => e.id)).size).toBe(added.length);
    for (const e of added)
      expect(e).toMatchObject({ outcome: 'success', details: { version: answers[0]!.body.version } });
  });

  it('a reader the credential is not bound to gets no secret and no secret.read event', async () => {
    const before = (await readEvents()).length;
    const res = await kt.api('GET', `/v1/credentials/${id}/secret`, undefined, {
      authorization: `Bearer ${tokens.tokens.carol}`,
    });
    expect(res.status).toBe(403);
    expect(res.text).not.toContain('password');
    expect(await readEvents()).toHaveLength(before);
    const { events } = await kt.runtime.ctx.audit.read({ actor: 'carol', action: 'auth.denied', limit: 10 });
    expect(events).toHaveLength(1);
  });

  it('a read whose audit event cannot be written gives no secret (the append is awaited before answering)', async () => {
    const redis = kt.runtime.ctx.redis;
    const stream = kt.runtime.ctx.audit.streamKey;
    const kept = `${stream}-kept`;
    // The stream replaced by a string: XADD fails (WRONGTYPE) for this one read.
    await redis.rename(stream, kept);
    await redis.set(stream, 'not a stream');
    try {
      const res = await readAs('alice');
      expect(res.status).toBeGreaterThanOrEqual(500);
      expect(res.text).not.toMatch(/"password"/);
    } finally {
      await redis.del(stream);
      await redis.rename(kept, stream);
    }
  });
});
