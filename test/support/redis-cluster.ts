/**
 * Test fixture: a real Redis Cluster of three masters on loopback, made the way an operator makes one
 * (`redis-server --cluster-enabled yes` three times, then `redis-cli --cluster create`). No mock: the cross-slot
 * rules Keyturn must keep are enforced by the servers themselves.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';

const execFileAsync = promisify(execFile);

export interface RedisClusterFixture {
  /** `host:port,…` of the masters, as REDIS_CLUSTER_HOSTS takes it. */
  hosts: string;
  ports: number[];
  stop(): Promise<void>;
}

const listenable = (port: number) =>
  new Promise<boolean>((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });

/** A port whose cluster bus port (port + 10000) is free as well. */
async function clusterPort(taken: Set<number>): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = 20000 + Math.floor(Math.random() * 25000);
    if (taken.has(port)) continue;
    if ((await listenable(port)) && (await listenable(port + 10000))) {
      taken.add(port);
      return port;
    }
  }
  throw new Error('no free port pair for a Redis Cluster node');
}

export async function startRedisCluster(masters = 3): Promise<RedisClusterFixture> {
  const dir = await mkdtemp(join(tmpdir(), 'keyturn-redis-cluster-'));
  const taken = new Set<number>();
  const ports: number[] = [];
  const children: ChildProcess[] = [];
  const stop = async () => {
    for (const child of children) child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  };
  try {
    for (let i = 0; i < masters; i++) {
      const port = await clusterPort(taken);
      ports.push(port);
      const child = spawn(
        'redis-server',
        [
          '--port',
          String(port),
          '--bind',
          '127.0.0.1',
          '--cluster-enabled',
          'yes',
          '--cluster-config-file',
          join(dir, `nodes-${port}.conf`),
          '--cluster-node-timeout',
          '2000',
          '--save',
          '',
          '--appendonly',
          'no',
          '--dir',
          dir,
        ],
        { stdio: 'ignore' },
      );
      children.push(child);
    }
    for (const port of ports) await waitForPing(port);
    await execFileAsync('redis-cli', [
      '--cluster',
      'create',
      ...ports.map((p) => `127.0.0.1:${p}`),
      '--cluster-replicas',
      '0',
      '--cluster-yes',
    ]);
    await waitForClusterOk(ports);
    return { hosts: ports.map((p) => `127.0.0.1:${p}`).join(','), ports, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

async function waitForPing(port: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const r = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null });
    r.on('error', () => {});
    try {
      await r.connect();
      await r.ping();
      return;
    } catch {
      await new Promise((done) => setTimeout(done, 100));
    } finally {
      r.disconnect();
    }
  }
  throw new Error(`redis-server on port ${port} did not start`);
}

async function waitForClusterOk(ports: number[]): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const states = await Promise.all(
      ports.map(async (port) => {
        const r = new Redis({ port, host: '127.0.0.1' });
        try {
          return /cluster_state:ok/.test(await r.cluster('INFO'));
        } finally {
          r.disconnect();
        }
      }),
    );
    if (states.every(Boolean)) return;
    await new Promise((done) => setTimeout(done, 200));
  }
  throw new Error('the Redis Cluster did not reach cluster_state:ok');
}
