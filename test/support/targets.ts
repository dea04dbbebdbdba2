// Downstream targets other than PostgreSQL, as fixtures the target-generic tests (SIGKILL, secret leaks) run
// against: each starts or reaches its server, registers as a connection body, makes users and checks logins.
import { randomBytes } from 'node:crypto';
import { startRedisAclServer } from './redis-acl-server.ts';

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

export const TARGET_FIXTURES: TargetFixture[] = [redisAcl];
