// Large lists (issue 14, goal 5): GET /v1/credentials in pages with an opaque cursor, GET /v1/compliance streamed,
// and the registry read a batch at a time by the overdue scan. Credentials are written through the registry (the
// routes read nothing else), so that a few thousand take a second.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_PASSWORD_POLICY } from '../../src/crypto/password.ts';
import type { CredentialSpec, CredentialState } from '../../src/registry/types.ts';
import { dropPrefix, type Keyturn, startKeyturn, testEnv } from '../support/harness.ts';

const env = testEnv();
let kt: Keyturn;

beforeAll(async () => {
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
  const res = await kt.api('POST', '/v1/connections', {
    id: 'lists-hook',
    type: 'webhook',
    host: '127.0.0.1',
    port: 9,
    tls: { mode: 'disable' },
    admin: { username: 'kid', password: 'k'.repeat(32) },
    verify: false, // nothing listens on port 9: the lists never rotate
  });
  expect(res.status, res.text).toBe(201);
});
afterAll(async () => {
  await kt?.close();
  await dropPrefix(env.prefix);
});

let serial = 0;
async function write(
  n: number,
  options: { prefix: string; createdAt?: string; labels?: (i: number) => Record<string, string> },
): Promise<string[]> {
  const ids: string[] = [];
  const registry = kt.runtime.ctx.registry;
  await Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const id = `${options.prefix}-${String(i).padStart(5, '0')}`;
      const at = options.createdAt ?? new Date(Date.now() + serial++).toISOString();
      const spec: CredentialSpec = {
        id,
        connection: 'lists-hook',
        username: id,
        strategy: 'single-user',
        schedule: { every: '30d' },
        store: { type: 'local' },
        password: { ...DEFAULT_PASSWORD_POLICY },
        labels: options.labels?.(i) ?? {},
        createdAt: at,
        updatedAt: at,
      };
      const state: CredentialState = {
        status: 'active',
        rotatedAt: at,
        failures: 0,
        ...(i % 5 === 0 ? { lastOutcome: 'failed' as const } : {}),
      };
      await registry.createCredential(spec, state);
      ids.push(id);
    }),
  );
  return ids;
}

async function everyPage(
  query: string,
  limit: number,
  between?: (page: number, more: boolean) => Promise<void>,
) {
  const seen: string[] = [];
  let cursor: string | null = '';
  let pages = 0;
  while (cursor !== null) {
    const res: { status: number; text: string; body: any } = await kt.api(
      'GET',
      `/v1/credentials?limit=${limit}${query}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
    );
    expect(res.status, res.text).toBe(200);
    expect(res.body.credentials.length).toBeLessThanOrEqual(limit);
    seen.push(...res.body.credentials.map((c: { id: string }) => c.id));
    cursor = res.body.next;
    pages++;
    await between?.(pages, cursor !== null);
  }
  return { seen, pages };
}

describe('GET /v1/credentials pages', () => {
  it('lists 250 credentials in pages of 40, each once, in creation order, and ends with next: null', async () => {
    const ids = await write(250, { prefix: 'paged' });
    const { seen, pages } = await everyPage('', 40);
    const mine = seen.filter((id) => id.startsWith('paged-'));
    expect(mine).toEqual([...ids].sort());
    expect(new Set(seen).size).toBe(seen.length);
    expect(pages).toBeGreaterThanOrEqual(7);
    // Without a limit, a page of 100.
    const first = await kt.api('GET', '/v1/credentials');
    expect(first.body.credentials).toHaveLength(100);
    expect(typeof first.body.next).toBe('string');
  });

  it('credentials made in the same millisecond are each listed once, across page ends', async () => {
    const ids = await write(30, { prefix: 'tied', createdAt: '2020-01-01T00:00:00.000Z' });
    const { seen } = await everyPage('&label=none:x', 7);
    expect(seen).toEqual([]);
    const all = (await everyPage('', 7)).seen.filter((id) => id.startsWith('tied-'));
    expect(all).toEqual([...ids].sort());
  });

  it('credentials added and removed while paging: none twice, none present throughout missed', async () => {
    const before = (await everyPage('', 1000)).seen;
    const removed = new Set<string>();
    const added: string[] = [];
    const { seen } = await everyPage('', 25, async (page, more) => {
      if (!more) return;
      // Between pages: remove a credential not yet reached and one already listed, add new ones.
      const victims = [before[before.length - page * 3], before[page]].filter(
        (id): id is string => id !== undefined && !removed.has(id),
      );
      for (const id of victims) {
        const c = await kt.runtime.ctx.registry.findCredential(id);
        if (c) await kt.runtime.ctx.registry.deleteCredential(c.spec);
        removed.add(id);
      }
      added.push(...(await write(2, { prefix: `added${page}` })));
    });
    expect(new Set(seen).size).toBe(seen.length);
    for (const id of before) if (!removed.has(id)) expect(seen, id).toContain(id);
    // Added after the cursor passed their place in creation order: they come at the end, so they are listed.
    for (const id of added) expect(seen, id).toContain(id);
  });

  it('filters page too: every match once, however sparse', async () => {
    const ids = await write(300, {
      prefix: 'sparse',
      labels: (i) => (i % 10 === 0 ? { team: 'rare' } : { team: 'common' }),
    });
    const { seen } = await everyPage('&label=team:rare', 8);
    expect(seen).toEqual(ids.filter((_, i) => i % 10 === 0).sort());
  });

  it('refuses a cursor it did not make, and a limit out of range, naming the field', async () => {
    for (const cursor of ['not-a-cursor', 'x'.repeat(50), '%%%']) {
      const res = await kt.api('GET', `/v1/credentials?cursor=${encodeURIComponent(cursor)}`);
      expect(res.status, cursor).toBe(400);
      expect(res.body.error.message).toContain('cursor');
    }
    for (const limit of ['0', '1001', 'many']) {
      const res = await kt.api('GET', `/v1/credentials?limit=${limit}`);
      expect(res.status, limit).toBe(400);
      expect(res.body.error.message).toContain('limit');
    }
  });
});

describe('GET /v1/compliance streams', () => {
  it('the JSON and CSV forms hold every credential once, the totals after the rows, as the report builds them', async () => {
    await write(1200, { prefix: 'report' });
    const built = await kt.runtime.ctx.compliance.build();
    const json = await kt.api('GET', '/v1/compliance');
    expect(json.status).toBe(200);
    expect(json.body.credentials).toHaveLength(built.credentials.length);
    expect(json.body.credentials.map((r: { id: string }) => r.id)).toEqual(
      built.credentials.map((r) => r.id),
    );
    expect(json.body.totals).toEqual(built.totals);
    expect(json.body.totals.failed).toBeGreaterThan(0);
    expect(Object.keys(json.body)).toEqual(['asOf', 'credentials', 'totals', 'admins']);
    const csv = await kt.api('GET', '/v1/compliance?format=csv');
    expect(csv.status).toBe(200);
    expect(csv.text.trimEnd().split('\n')).toHaveLength(built.credentials.length + 1);
    // Filters still apply.
    const overdue = await kt.api('GET', '/v1/compliance?overdue=true');
    expect(overdue.body.totals.credentials).toBe(built.totals.overdue);
  });
});

describe('the registry is read a batch at a time', () => {
  it('the overdue scan reads pages of at most 500 credentials', async () => {
    const registry = kt.runtime.ctx.registry;
    const original = registry.credentialIds.bind(registry);
    const pages: number[] = [];
    registry.credentialIds = async (limit, after) => {
      const page = await original(limit, after);
      pages.push(page.length);
      return page;
    };
    try {
      await kt.runtime.workers!.scanOverdue();
    } finally {
      registry.credentialIds = original;
    }
    expect(pages.length).toBeGreaterThanOrEqual(3);
    expect(Math.max(...pages)).toBeLessThanOrEqual(500);
  });
});
