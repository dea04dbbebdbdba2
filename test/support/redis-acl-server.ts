// A private redis-server with ACL users kept in an ACL file, for the Redis target's tests: the machine's Redis
// on 6379 is shared by every test and has no users to rotate.
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { freePort } from './ports.ts';

export interface RedisAclServer {
  host: string;
  port: number;
  adminUser: string;
  adminPassword: string;
  aclFile: string;
  /** Runs one command as the fixture's own operator (not Keyturn's admin, whose password an admin rotation changes). */
  admin(...args: string[]): Promise<unknown>;
  /** Logs in as a user and runs PING; false when Redis refuses the login. */
  canLogin(username: string, password: string): Promise<boolean>;
  stop(): Promise<void>;
}

export async function startRedisAclServer(users: string[] = []): Promise<RedisAclServer> {
  const dir = mkdtempSync(join(tmpdir(), 'keyturn-redis-acl-'));
  const aclFile = join(dir, 'users.acl');
  const adminUser = 'keyturn-admin';
  const adminPassword = randomBytes(24).toString('hex');
  // The fixture's own operator, apart from Keyturn's admin: an admin rotation changes Keyturn's admin password, and
  // the fixture must still make users and look afterwards.
  const rootUser = 'fixture-root';
  const rootPassword = randomBytes(24).toString('hex');
  writeFileSync(
    aclFile,
    [
      `user default off`,
      `user ${adminUser} on >${adminPassword} ~* &* +@all`,
      `user ${rootUser} on >${rootPassword} ~* &* +@all`,
      ...users,
      '',
    ].join('\n'),
  );
  const port = await freePort();
  const child: ChildProcess = spawn(
    'redis-server',
    [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'no',
      '--dir',
      dir,
      '--aclfile',
      aclFile,
    ],
    { stdio: 'ignore' },
  );
  const connect = (username: string, password: string) => {
    const client = new Redis({
      host: '127.0.0.1',
      port,
      username,
      password,
      lazyConnect: true,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
    });
    client.on('error', () => {});
    return client;
  };
  for (let i = 0; ; i++) {
    const probe = connect(rootUser, rootPassword);
    try {
      await probe.connect();
      await probe.ping();
      break;
    } catch (err) {
      if (i > 50) throw new Error(`the private redis-server did not start: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, 100));
    } finally {
      probe.disconnect();
    }
  }
  return {
    host: '127.0.0.1',
    port,
    adminUser,
    adminPassword,
    aclFile,
    async admin(...args) {
      const client = connect(rootUser, rootPassword);
      try {
        await client.connect();
        return await client.call(args[0]!, ...args.slice(1));
      } finally {
        client.disconnect();
      }
    },
    async canLogin(username, password) {
      // AUTH as a command of its own: given to the constructor, a refusal only shows as a closed connection.
      const client = new Redis({
        host: '127.0.0.1',
        port,
        lazyConnect: true,
        enableReadyCheck: false,
        maxRetriesPerRequest: 0,
        retryStrategy: () => null,
      });
      client.on('error', () => {});
      try {
        await client.connect();
        await client.call('AUTH', username, password);
        await client.ping();
        return true;
      } catch (err) {
        if (/WRONGPASS/.test((err as Error).message)) return false;
        throw err;
      } finally {
        client.disconnect();
      }
    },
    async stop() {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
