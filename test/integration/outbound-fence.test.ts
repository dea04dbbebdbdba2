// The outbound fence (issue 17 §2): Keyturn refuses to connect, on an operator's behalf, to link-local and metadata
// addresses, to loopback in production, and to what KEYTURN_OUTBOUND_DENY names or KEYTURN_OUTBOUND_ALLOW leaves out:
// a 422 at registration, and a failed rotation with the reason at connect time, after DNS resolution (a name that
// resolves elsewhere later is caught). Names are resolved by a stub resolver (net/outbound.ts takes one), and the
// denied addresses are never sent a packet: where a denied address is on this machine (loopback), a listener there
// counts the connections it gets, and gets none.
import dns from 'node:dns';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configureOutbound, outboundPolicy } from '../../src/net/outbound.ts';
import {
  dropPrefix,
  type Keyturn,
  startKeyturn,
  testEnv,
  unverifiedWebhookBody,
  waitForRotation,
} from '../support/harness.ts';
import { freePort } from '../support/ports.ts';

/** Names under .invalid, resolved here only: never by a real resolver. */
const NAMES = new Map<string, string>([
  ['meta.fence.invalid', '169.254.169.254'],
  ['mapped.fence.invalid', '::ffff:169.254.169.254'],
  ['ec2v6.fence.invalid', 'fd00:ec2::254'],
]);

const stubLookup = ((hostname: string, options: unknown, callback?: unknown) => {
  const done = (typeof options === 'function' ? options : callback) as (...a: unknown[]) => void;
  const all = typeof options === 'object' && options !== null && (options as { all?: boolean }).all;
  const address = NAMES.get(hostname);
  if (address === undefined) {
    if (hostname.endsWith('.invalid')) {
      return done(Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' }));
    }
    return (dns.lookup as (...a: unknown[]) => void)(hostname, options, callback);
  }
  const family = net.isIP(address);
  return all ? done(null, [{ address, family }]) : done(null, address, family);
}) as typeof dns.lookup;

/** A TCP listener on loopback that counts the connections it gets (and closes them). */
async function countingListener(): Promise<{ port: number; count(): number; close(): Promise<void> }> {
  let connections = 0;
  const server = net.createServer((socket) => {
    connections++;
    socket.destroy();
  });
  const port = await freePort();
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    port,
    count: () => connections,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

describe('outbound fence: always-denied addresses, deny and allow lists', () => {
  const env = testEnv({ LOG_LEVEL: 'warn', KEYTURN_OUTBOUND_DENY: '10.0.0.0/8,*.corp.invalid' });
  let kt: Keyturn;

  beforeAll(async () => {
    kt = await startKeyturn(env, { components: ['api', 'worker'] });
    configureOutbound({ ...outboundPolicy(), lookup: stubLookup });
  });
  afterAll(async () => {
    await kt?.close();
    await dropPrefix(env.prefix);
  });

  it.each([
    ['the instance metadata address', '169.254.169.254', /link-local or cloud metadata/],
    ['a link-local address', '169.254.10.20', /link-local or cloud metadata/],
    ['an IPv4-mapped metadata address', '0:0:0:0:0:ffff:a9fe:a9fe', /link-local or cloud metadata/],
    ["AWS's IPv6 metadata address", 'fd00:ec2::254', /link-local or cloud metadata/],
    ['an IPv6 link-local address', 'fe80::1', /link-local or cloud metadata/],
    ['the unspecified address', '0.0.0.0', /link-local or cloud metadata/],
    ["GCP's metadata name", 'metadata.google.internal', /link-local or cloud metadata/],
    ['a name that resolves to the metadata address', 'meta.fence.invalid', /169\.254\.169\.254/],
    ['a name that resolves to a mapped metadata address', 'mapped.fence.invalid', /metadata/],
    ['a name that resolves to the IPv6 metadata address', 'ec2v6.fence.invalid', /metadata/],
    ['a range in KEYTURN_OUTBOUND_DENY', '10.1.2.3', /KEYTURN_OUTBOUND_DENY \("10\.0\.0\.0\/8"\)/],
    [
      'a host pattern in KEYTURN_OUTBOUND_DENY',
      'db.corp.invalid',
      /KEYTURN_OUTBOUND_DENY \("\*\.corp\.invalid"\)/,
    ],
  ])('registration refuses %s (422 naming why), verify or not', async (_what, host, why) => {
    for (const verify of [false, true]) {
      const res = await kt.api('POST', '/v1/connections', {
        ...unverifiedWebhookBody('fenced', host, 8443),
        verify,
      });
      expect(res.status, res.text).toBe(422);
      expect(res.body.error.message).toMatch(why);
    }
    const pg = await kt.api('POST', '/v1/connections', {
      id: 'fenced-pg',
      type: 'postgres',
      host,
      admin: { username: 'a', password: 'b' },
      verify: false,
    });
    expect(pg.status).toBe(422);
    expect((await kt.api('GET', '/v1/connections/fenced')).status).toBe(404);
  });

  it('a PATCH that moves a connection to a denied address is refused, and the connection stays where it was', async () => {
    const listener = await countingListener();
    try {
      expect(
        (await kt.api('POST', '/v1/connections', unverifiedWebhookBody('moving', '127.0.0.1', listener.port)))
          .status,
      ).toBe(201);
      const moved = await kt.api('PATCH', '/v1/connections/moving', {
        host: 'meta.fence.invalid',
        verify: false,
      });
      expect(moved.status, moved.text).toBe(422);
      expect(moved.body.error.message).toMatch(/metadata/);
      expect((await kt.api('GET', '/v1/connections/moving')).body.host).toBe('127.0.0.1');
    } finally {
      await listener.close();
    }
  });

  it('at connect time: a name that resolved to an allowed address at registration and to the metadata address now fails the rotation, naming why, without connecting', async () => {
    const listener = await countingListener();
    try {
      NAMES.set('flip.fence.invalid', '127.0.0.1');
      const made = await kt.api(
        'POST',
        '/v1/connections',
        unverifiedWebhookBody('flip', 'flip.fence.invalid', listener.port),
      );
      expect(made.status, made.text).toBe(201);
      // DNS rebinding: the same name now answers the metadata address.
      NAMES.set('flip.fence.invalid', '169.254.169.254');
      const created = await kt.api('POST', '/v1/credentials', {
        id: 'flip-cred',
        connection: 'flip',
        username: 'app',
        strategy: 'single-user',
        schedule: { every: '30d' },
      });
      expect(created.status, created.text).toBe(201);
      const rotation = await waitForRotation(kt, created.body.rotation.id);
      expect(rotation.status).toBe('failed');
      expect(rotation.error.message).toMatch(/169\.254\.169\.254/);
      expect(rotation.error.message).toMatch(/did not connect/);
      expect(rotation.rollback.note).toMatch(/nothing had been changed downstream/);
      // A refusal, not an outage: one attempt, no retries.
      expect(rotation.attempts).toBe(1);
      const dry = await kt.api('POST', '/v1/credentials/flip-cred/rotate?dryRun=true');
      expect(dry.body.ok).toBe(false);
      expect(JSON.stringify(dry.body.checks)).toMatch(/metadata/);
      expect(listener.count()).toBe(0);
    } finally {
      NAMES.delete('flip.fence.invalid');
      await listener.close();
    }
  });
});

describe('outbound fence: loopback in production, and an allow list', () => {
  const env = testEnv({ LOG_LEVEL: 'warn', KEYTURN_OUTBOUND_ALLOW: '127.0.0.2/32,*.allowed.invalid' });
  let kt: Keyturn;

  beforeAll(async () => {
    kt = await startKeyturn(env, { components: ['api', 'worker'] });
  });
  afterAll(async () => {
    await kt?.close();
    await dropPrefix(env.prefix);
  });

  it('with an allow list, only what it names is reached: other loopback addresses are refused at registration', async () => {
    configureOutbound({ ...outboundPolicy(), lookup: stubLookup });
    const outside = await kt.api('POST', '/v1/connections', unverifiedWebhookBody('outside', '127.0.0.1', 9));
    expect(outside.status).toBe(422);
    expect(outside.body.error.message).toMatch(/not in KEYTURN_OUTBOUND_ALLOW/);
    expect(
      (await kt.api('POST', '/v1/connections', unverifiedWebhookBody('inside', '127.0.0.2', 9))).status,
    ).toBe(201);
  });

  it('production refuses loopback, at connect time too, without a packet reaching the listener there', async () => {
    const listener = await countingListener();
    const policy = outboundPolicy();
    try {
      // Registered under the allow list's host pattern, then production's rules without it: loopback is refused.
      NAMES.set('svc.allowed.invalid', '127.0.0.1');
      const made = await kt.api(
        'POST',
        '/v1/connections',
        unverifiedWebhookBody('prod', 'svc.allowed.invalid', listener.port),
      );
      expect(made.status, made.text).toBe(201);
      configureOutbound({ loopback: false, deny: [], denyByDefault: false, lookup: stubLookup });
      const created = await kt.api('POST', '/v1/credentials', {
        id: 'prod-cred',
        connection: 'prod',
        username: 'app',
        strategy: 'single-user',
        schedule: { every: '30d' },
      });
      const rotation = await waitForRotation(kt, created.body.rotation.id);
      expect(rotation.status).toBe('failed');
      expect(rotation.error.message).toMatch(/loopback address, refused in production/);
      // And production's deny-by-default without an allow list: the same connection is refused by name.
      configureOutbound({ loopback: false, deny: [], denyByDefault: true, lookup: stubLookup });
      const again = await kt.api('POST', '/v1/credentials/prod-cred/rotate');
      const second = await waitForRotation(kt, again.body.rotationId);
      expect(second.status).toBe('failed');
      expect(second.error.message).toMatch(
        /in production Keyturn connects only where KEYTURN_OUTBOUND_ALLOW says/,
      );
      expect(listener.count()).toBe(0);
    } finally {
      configureOutbound(policy);
      NAMES.delete('svc.allowed.invalid');
      await listener.close();
    }
  });
});
