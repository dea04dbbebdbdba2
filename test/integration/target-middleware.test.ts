// The middleware every target driver is wrapped in (src/targets/middleware.ts, issue 16): a deadline that cancels a
// verb through its AbortSignal, secrets noted for scrubbing, and every call measured (the diagnostics channel, which
// the runtime's metrics turn into keyturn_target_calls_total and keyturn_target_call_duration_seconds).
//
// A driver made up here shows the contract of the wrapper; the webhook and PostgreSQL drivers, through the real map of
// targets/index.ts, show that a cancelled verb stops its I/O: the HTTP request is cut, the PostgreSQL connection too.

import { randomBytes } from 'node:crypto';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { currentSecretScope, runInNewSecretScope } from '../../src/crypto/secret-scope.ts';
import { createLogger } from '../../src/logging/logger.ts';
import { Metrics } from '../../src/metrics/metrics.ts';
import type { Connection } from '../../src/registry/types.ts';
import { targetDriver } from '../../src/targets/index.ts';
import {
  DEADLINE_STEPS,
  TARGET_CALL_CHANNEL,
  type TargetCall,
  withMiddleware,
} from '../../src/targets/middleware.ts';
import {
  type CallOptions,
  type TargetDriver,
  TargetRefusedError,
  type TargetSession,
  TargetUnavailableError,
} from '../../src/targets/types.ts';
import { canLogin, createAppRole, pgAdmin, pgInfo, waitFor } from '../support/harness.ts';

const CONNECTION: Connection = {
  id: 'mw',
  type: 'made-up',
  host: '127.0.0.1',
  port: 1,
  admin: { username: 'admin' },
  adminStore: { type: 'local' },
  labels: {},
  createdAt: '',
  updatedAt: '',
};

/** A driver whose verbs do what the test says, and remember the CallOptions they were given. */
function madeUpDriver(
  behaviour: Partial<Record<keyof TargetSession, (call?: CallOptions) => Promise<unknown>>>,
) {
  const seen: Array<{ verb: string; call: CallOptions | undefined }> = [];
  const verb =
    (name: keyof TargetSession, arity: number) =>
    async (...args: unknown[]) => {
      const call = args[arity] as CallOptions | undefined;
      seen.push({ verb: name, call });
      return behaviour[name] ? behaviour[name](call) : undefined;
    };
  const driver: TargetDriver = {
    type: 'made-up',
    engine: 'made-up',
    defaultPort: 1,
    async open() {
      return {
        authenticate: verb('authenticate', 1),
        userExists: verb('userExists', 1),
        createUser: verb('createUser', 3),
        updatePassword: verb('updatePassword', 2),
        deleteUser: verb('deleteUser', 1),
        close: verb('close', 0),
      } as unknown as TargetSession;
    },
  };
  return { driver: withMiddleware(driver), seen };
}

function published(): { calls: TargetCall[]; stop(): void } {
  const calls: TargetCall[] = [];
  const listener = (m: unknown) => calls.push(m as TargetCall);
  subscribe(TARGET_CALL_CHANNEL, listener);
  return { calls, stop: () => unsubscribe(TARGET_CALL_CHANNEL, listener) };
}

describe('target middleware', () => {
  it('cancels a verb at its deadline: the verb sees its signal abort, the call rejects as unavailable', async () => {
    const { driver, seen } = madeUpDriver({ updatePassword: () => new Promise(() => {}) });
    const session = await driver.open(
      CONNECTION,
      { username: 'admin', password: 'admin-pw' },
      { timeoutMs: 25 },
    );
    const channel = published();
    try {
      const started = Date.now();
      const err = await session.updatePassword('app', 'new-pw').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TargetUnavailableError);
      expect((err as TargetUnavailableError).code).toBe('DEADLINE');
      expect((err as Error).message).toContain(`did not finish within ${DEADLINE_STEPS * 25} ms`);
      expect(Date.now() - started).toBeGreaterThanOrEqual(DEADLINE_STEPS * 25 - 5);
      const signal = seen.find((s) => s.verb === 'updatePassword')?.call?.signal;
      expect(signal?.aborted).toBe(true);
      expect(channel.calls).toEqual([
        { target: 'made-up', verb: 'updatePassword', outcome: 'timeout', seconds: expect.any(Number) },
      ]);
    } finally {
      channel.stop();
    }
  });

  it('passes a caller’s signal through, and classifies each outcome', async () => {
    const { driver, seen } = madeUpDriver({
      // Runs until its signal aborts.
      authenticate: (call) =>
        new Promise((_, reject) =>
          call?.signal?.addEventListener('abort', () =>
            reject(new TargetUnavailableError('cancelled by the caller')),
          ),
        ),
      deleteUser: async () => {
        throw new TargetRefusedError('no such privilege');
      },
      userExists: async () => {
        throw new TargetUnavailableError('connection reset');
      },
      createUser: async () => {
        throw new Error('a bug');
      },
    });
    const session = await driver.open(
      CONNECTION,
      { username: 'admin', password: 'admin-pw' },
      { timeoutMs: 5000 },
    );
    const channel = published();
    try {
      const outer = new AbortController();
      const pending = session.authenticate({ username: 'app', password: 'pw' }, { signal: outer.signal });
      outer.abort();
      // Rejected at once by the middleware, whatever the verb does with its signal (this one stops too).
      await expect(pending).rejects.toThrow('made-up authenticate was cancelled by its caller');
      expect(seen[0]?.call?.signal?.aborted).toBe(true);
      await expect(session.deleteUser('app')).rejects.toBeInstanceOf(TargetRefusedError);
      await expect(session.userExists('app')).rejects.toBeInstanceOf(TargetUnavailableError);
      await expect(session.createUser('app', 'pw', { like: 'x' })).rejects.toThrow('a bug');
      expect(channel.calls.map((c) => [c.verb, c.outcome])).toEqual([
        ['authenticate', 'unavailable'],
        ['deleteUser', 'refused'],
        ['userExists', 'unavailable'],
        ['createUser', 'error'],
      ]);
      // A verb the session does not have stays absent: callers ask for it and find none.
      expect(session.dualPasswords).toBeUndefined();
    } finally {
      channel.stop();
    }
  });

  it('notes the admin password and every password a verb is given in the current secret scope', async () => {
    const { driver } = madeUpDriver({});
    await runInNewSecretScope(async () => {
      const session = await driver.open(
        CONNECTION,
        { username: 'admin', password: 'admin-pw-1' },
        { timeoutMs: 5000 },
      );
      await session.updatePassword('app', 'new-pw-2');
      await session.authenticate({ username: 'app', password: 'login-pw-3' });
      await session.createUser('clone', 'clone-pw-4', { like: 'app' });
      expect([...(currentSecretScope() ?? [])].sort()).toEqual([
        'admin-pw-1',
        'clone-pw-4',
        'login-pw-3',
        'new-pw-2',
      ]);
    });
  });

  it('the runtime metrics count each call by target, verb and outcome', async () => {
    const metrics = new Metrics({
      sources: { credentials: async function* () {}, queues: () => [] },
      logger: createLogger({ level: 'silent', format: 'json' }),
      targetTypes: ['made-up'],
    } as never);
    try {
      const { driver } = madeUpDriver({ authenticate: async () => ({ ok: true }) });
      const session = await driver.open(
        CONNECTION,
        { username: 'admin', password: 'admin-pw' },
        { timeoutMs: 5000 },
      );
      await session.authenticate({ username: 'app', password: 'pw' });
      await session.authenticate({ username: 'app', password: 'pw' });
      const text = await metrics.registry.metrics();
      expect(text).toContain(
        'keyturn_target_calls_total{target="made-up",verb="authenticate",outcome="ok"} 2',
      );
      expect(text).toContain(
        'keyturn_target_call_duration_seconds_count{target="made-up",verb="authenticate"} 2',
      );
      expect(text).not.toContain('pw');
    } finally {
      metrics.close();
    }
  });
});

describe('a cancelled verb stops its I/O', () => {
  let server: http.Server;
  let port: number;
  const requests: Array<{ closedAt?: number }> = [];

  beforeAll(async () => {
    // Answers nothing, and notes when each request's connection is closed by the client.
    server = http.createServer((req) => {
      const seen: { closedAt?: number } = {};
      requests.push(seen);
      req.socket.once('close', () => {
        seen.closedAt = Date.now();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  it('webhook: at the deadline the request in flight is cut, long before the driver’s own timeout', async () => {
    const driver = targetDriver('webhook')!;
    const session = await driver.open(
      // The driver's own per-request timeout is 20 s here; the middleware's deadline is 4 × 50 ms.
      { ...CONNECTION, type: 'webhook', port, tls: { mode: 'disable' }, options: { timeoutMs: 20_000 } },
      { username: 'kid', password: 'signing-key-0123456789' },
      { timeoutMs: 50 },
    );
    const started = Date.now();
    const err = await session.updatePassword('app', 'pw-0123456789').catch((e: unknown) => e);
    expect((err as TargetUnavailableError).code).toBe('DEADLINE');
    await new Promise<void>((resolve) => {
      const check = () => (requests.at(-1)?.closedAt ? resolve() : setTimeout(check, 10));
      check();
    });
    expect(requests.at(-1)!.closedAt! - started).toBeLessThan(2000);
    await session.close();
  });

  it('PostgreSQL: a cancelled ALTER ROLE is cut with its connection and never lands, even once the lock it waited on is gone', async () => {
    const role = await createAppRole();
    const before = randomBytes(12).toString('hex');
    await pgAdmin((c) =>
      c.query(`ALTER ROLE ${pg.escapeIdentifier(role.name)} PASSWORD ${pg.escapeLiteral(before)}`),
    );
    const info = pgInfo();
    // Another session changes the role and holds its row lock: Keyturn's ALTER ROLE waits behind it.
    const holder = new pg.Client({
      host: info.host,
      port: info.port,
      database: info.database,
      user: info.adminUser,
      password: info.adminPassword,
    });
    await holder.connect();
    try {
      await holder.query('BEGIN');
      await holder.query(`ALTER ROLE ${pg.escapeIdentifier(role.name)} VALID UNTIL 'infinity'`);
      const session = await targetDriver('postgres')!.open(
        { ...CONNECTION, type: 'postgres', host: info.host, port: info.port, database: info.database },
        { username: info.adminUser, password: info.adminPassword },
        { timeoutMs: 10_000 },
      );
      const caller = new AbortController();
      const pending = session
        .updatePassword(role.name, 'never-lands-0123456789', { signal: caller.signal })
        .catch((e: unknown) => e);
      // The ALTER ROLE is waiting on the lock once PostgreSQL shows it so.
      await waitFor('the ALTER ROLE to wait on the lock', async () =>
        pgAdmin(async (c) => {
          const { rows } = await c.query(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'ALTER ROLE%'",
          );
          return rows.length > 0 || undefined;
        }),
      );
      const cancelledAt = Date.now();
      caller.abort();
      const err = await pending;
      expect(err).toBeInstanceOf(TargetUnavailableError);
      expect(Date.now() - cancelledAt).toBeLessThan(2000);
      await holder.query('COMMIT');
      // The waiting statement died with its connection: the old password still works, the new one never will.
      await waitFor('PostgreSQL to end the cut backend', async () =>
        pgAdmin(async (c) => {
          const { rows } = await c.query(
            "SELECT 1 FROM pg_stat_activity WHERE query LIKE 'ALTER ROLE%never-lands%'",
          );
          return rows.length === 0 || undefined;
        }),
      );
      expect(await canLogin(role.name, before)).toBe(true);
      expect(await canLogin(role.name, 'never-lands-0123456789')).toBe(false);
      await session.close();
    } finally {
      await holder.end().catch(() => {});
    }
  });
});
