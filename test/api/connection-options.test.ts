// A connection's `options` are checked by one function on create (POST) and on change (PATCH) (issue 15): an empty
// object is accepted on both for every type, an option a type does not take is refused on both with the same 422.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dropPrefix, type Keyturn, startKeyturn, testEnv } from '../support/harness.ts';

const env = testEnv({ LOG_LEVEL: 'warn' });
let kt: Keyturn;

beforeAll(async () => {
  kt = await startKeyturn(env);
});
afterAll(async () => {
  await kt?.close();
  await dropPrefix(env.prefix);
});

const base = {
  postgres: { host: '127.0.0.1', port: 5432, database: 'postgres' },
  redis: { host: '127.0.0.1', port: 6379 },
  mysql: { host: '127.0.0.1', port: 3306 },
} as const;

describe('connection options: the same check on POST and PATCH', () => {
  for (const type of ['postgres', 'redis', 'mysql'] as const) {
    it(`${type}: options {} is accepted on create and on change`, async () => {
      const id = `opts-empty-${type}`;
      const created = await kt.api('POST', '/v1/connections', {
        id,
        type,
        ...base[type],
        admin: { username: 'keyturn_admin', password: 'not-used-here-0123456789' },
        verify: false, // no such admin: the options are what is checked here
        options: {},
      });
      expect(created.status, created.text).toBe(201);
      const changed = await kt.api('PATCH', `/v1/connections/${id}`, { options: {}, verify: false });
      expect(changed.status, changed.text).toBe(200);
    });

    it(`${type}: an option it does not take is refused alike on create and on change`, async () => {
      const id = `opts-bad-${type}`;
      const bad = { noSuchOption: true };
      const created = await kt.api('POST', '/v1/connections', {
        id,
        type,
        ...base[type],
        admin: { username: 'keyturn_admin', password: 'not-used-here-0123456789' },
        verify: false, // no such admin: the options are what is checked here
        options: bad,
      });
      expect(created.status, created.text).toBe(422);
      const made = await kt.api('POST', '/v1/connections', {
        id,
        type,
        ...base[type],
        admin: { username: 'keyturn_admin', password: 'not-used-here-0123456789' },
        verify: false, // no such admin: the options are what is checked here
      });
      expect(made.status, made.text).toBe(201);
      const changed = await kt.api('PATCH', `/v1/connections/${id}`, { options: bad });
      expect(changed.status, changed.text).toBe(422);
      expect((changed.body as any).error).toEqual((created.body as any).error);
      expect((changed.body as any).error.message).toMatch(
        /^options: .*noSuchOption|^options: connections of type/,
      );
    });
  }
});
