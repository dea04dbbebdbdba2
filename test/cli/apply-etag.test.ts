// The API's optimistic concurrency that `keyturn apply` writes through (issue 18): GET answers an ETag of the
// object's definition, PATCH and DELETE with If-Match are made only over that version (412 otherwise, nothing
// written), and a rotation (state, not definition) does not change the tag.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createAppRole,
  dropPrefix,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  testEnv,
  waitForRotation,
} from '../support/harness.ts';

const env = testEnv();
let kt: Keyturn;
let connection: string;
let credential: string;

beforeAll(async () => {
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
  connection = await registerPgConnection(kt);
  const role = await createAppRole();
  credential = `etag-${role.name}`;
  const created = await kt.api('POST', '/v1/credentials', {
    id: credential,
    connection,
    username: role.name,
    strategy: 'single-user',
    schedule: { every: '30d' },
  });
  expect(created.status).toBe(201);
  expect(created.headers.get('etag')).toMatch(/^"[A-Za-z0-9_-]{27}"$/);
  await waitForRotation(kt, created.body.rotation.id);
});
afterAll(async () => {
  await kt?.close();
  await dropPrefix(env.prefix);
});

describe.each([
  [
    'credential',
    () => `/v1/credentials/${credential}`,
    { schedule: { every: '7d' } },
    { schedule: { every: '14d' } },
  ],
  ['connection', () => `/v1/connections/${connection}`, { labels: { a: '1' } }, { labels: { a: '2' } }],
] as const)('ETag and If-Match on a %s', (_kind, path, first, second) => {
  it('GET answers the version; PATCH over it succeeds and answers the next one', async () => {
    const read = await kt.api('GET', path());
    const tag = read.headers.get('etag')!;
    expect(tag).toMatch(/^"[A-Za-z0-9_-]{27}"$/);
    expect((await kt.api('GET', path())).headers.get('etag')).toBe(tag);
    const patched = await kt.api('PATCH', path(), first, { 'if-match': tag });
    expect(patched.status, patched.text).toBe(200);
    const next = patched.headers.get('etag')!;
    expect(next).not.toBe(tag);
    expect((await kt.api('GET', path())).headers.get('etag')).toBe(next);

    // Over the old version: 412 naming it, and nothing written.
    const stale = await kt.api('PATCH', path(), second, { 'if-match': tag });
    expect(stale.status).toBe(412);
    expect(stale.body.error.code).toBe('precondition_failed');
    expect(stale.body.error.message).toContain('changed since you read it');
    expect((await kt.api('GET', path())).headers.get('etag')).toBe(next);
    const deleted = await kt.api('DELETE', path(), undefined, { 'if-match': tag });
    expect(deleted.status).toBe(412);
    expect((await kt.api('GET', path())).status).toBe(200);

    // "*" and a list holding the current tag are honoured; a malformed header is a 400 naming it.
    expect((await kt.api('PATCH', path(), second, { 'if-match': `"nope", ${next}` })).status).toBe(200);
    const bad = await kt.api('PATCH', path(), second, { 'if-match': 'not-a-tag' });
    expect(bad.status).toBe(400);
    expect(bad.body.error.message).toContain('if-match');
  });
});

it('a rotation changes the state, not the definition: the tag stays', async () => {
  const before = (await kt.api('GET', `/v1/credentials/${credential}`)).headers.get('etag');
  const rotate = await kt.api('POST', `/v1/credentials/${credential}/rotate`);
  expect((await waitForRotation(kt, rotate.body.rotationId)).status).toBe('succeeded');
  expect((await kt.api('GET', `/v1/credentials/${credential}`)).headers.get('etag')).toBe(before);
});

it('DELETE over the current version deletes', async () => {
  const tag = (await kt.api('GET', `/v1/credentials/${credential}`)).headers.get('etag')!;
  expect(
    (await kt.api('DELETE', `/v1/credentials/${credential}`, undefined, { 'if-match': tag })).status,
  ).toBe(204);
  expect((await kt.api('GET', `/v1/credentials/${credential}`)).status).toBe(404);
});
