// Downstream targets other than PostgreSQL, as fixtures the target-generic tests (SIGKILL, secret leaks) run
// against: each starts or reaches its server, registers as a connection body, makes users and checks logins.
import { randomBytes, scryptSync, timingSafeEqual } from 'node:crypto';
import { startRedisAclServer } from './redis-acl-server.ts';
import { startWebhookServer } from './webhook-server.ts';

export interface StartedTarget {
  /** Body of POST /v1/connections, without the id. */
  connection: Record<string, unknown>;
  /** Whether single-user keeps the old password working (overlap) instead of replacing it. */
  dualPassword: boolean;
  /** A fresh user with a known password, allowed to log in. */
  createUser(): Promise<{ username: string; password: string }>;
  canLogin(username: string, password: string): Promise<boolean>;
  /** Secrets of the fixture itself (admin passwords, signing keys) that must never leak either. */
  secrets: string[];
  stop(): Promise<void>;
}

export interface TargetFixture {
  name: string;
  skipReason(): Promise<string | undefined>;
  start(): Promise<StartedTarget>;
}

const redisAcl: TargetFixture = {
  name: 'Redis ACL',
  async skipReason() {
    const { spawnSync } = await import('node:child_process');
    return spawnSync('redis-server', ['--version']).status === 0 ? undefined : 'no redis-server on the PATH';
  },
  async start() {
    const server = await startRedisAclServer();
    return {
      connection: {
        type: 'redis',
        host: server.host,
        port: server.port,
        admin: { username: server.adminUser, password: server.adminPassword },
      },
      dualPassword: true,
      async createUser() {
        const username = `u${randomBytes(4).toString('hex')}`;
        const password = randomBytes(18).toString('base64url');
        await server.admin(
          'ACL',
          'SETUSER',
          username,
          'on',
          `>${password}`,
          '~app:*',
          '-@all',
          '+get',
          '+ping',
        );
        return { username, password };
      },
      canLogin: (u, p) => server.canLogin(u, p),
      secrets: [server.adminPassword],
      stop: () => server.stop(),
    };
  },
};

const webhook: TargetFixture = {
  name: 'webhook',
  skipReason: async () => undefined,
  async start() {
    const signingKey = randomBytes(32).toString('base64url');
    const server = await startWebhookServer({ signingKey, keyId: 'kid-test' });
    // The example service keeps scrypt hashes (as docs/webhook-target.md shows); the fixture reads the same map.
    const check = (username: string, password: string) => {
      const user = server.users.get(username);
      return Boolean(user && timingSafeEqual(scryptSync(password, user.salt, 32), user.hash));
    };
    return {
      connection: {
        type: 'webhook',
        host: '127.0.0.1',
        port: server.port,
        tls: { mode: 'disable' },
        admin: { username: 'kid-test', password: signingKey },
      },
      dualPassword: false,
      async createUser() {
        const username = `svc_${randomBytes(4).toString('hex')}`;
        const password = randomBytes(18).toString('base64url');
        const salt = randomBytes(16);
        server.users.set(username, { salt, hash: scryptSync(password, salt, 32) });
        return { username, password };
      },
      canLogin: async (u, p) => check(u, p),
      secrets: [signingKey],
      stop: () => server.close(),
    };
  },
};

export const TARGET_FIXTURES: TargetFixture[] = [redisAcl, webhook];
