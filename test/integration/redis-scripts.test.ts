// Keyturn's Redis clients run Lua scripts by SHA (src/redis/client.ts, "EVAL by SHA"): the text goes out only when
// Redis does not know the script, as after a restart or a failover. Against a private redis-server, whose command
// statistics no other test touches.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRedisClient, type RedisClient } from '../../src/redis/client.ts';
import { type RedisAclServer, startRedisAclServer } from '../support/redis-acl-server.ts';

let server: RedisAclServer;
let client: RedisClient;

const SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])";

async function calls(command: 'eval' | 'evalsha'): Promise<number> {
  const info = String(await server.admin('INFO', 'commandstats'));
  return Number(new RegExp(`cmdstat_${command}:calls=(\\d+)`).exec(info)?.[1] ?? 0);
}

beforeAll(async () => {
  server = await startRedisAclServer();
  client = createRedisClient(
    {
      topology: { kind: 'standalone', url: `redis://127.0.0.1:${server.port}` },
      username: server.adminUser,
      password: server.adminPassword,
      minReplicasAck: 0,
      waitTimeoutMs: 1000,
    },
    'commands',
    'scripts-test',
  );
  await client.connect();
});

afterAll(async () => {
  client?.disconnect();
  await server?.stop();
});

describe('scripts by SHA', () => {
  it('sends the text once, then only the SHA; after SCRIPT FLUSH (a restarted or promoted Redis) the text once more', async () => {
    const evalBefore = await calls('eval');
    expect(await client.eval(SCRIPT, 1, 'counter', 2)).toBe(2);
    // Unknown at first: EVALSHA answered NOSCRIPT, and the text followed.
    expect(await calls('eval')).toBe(evalBefore + 1);
    const shaBefore = await calls('evalsha');
    for (let i = 0; i < 5; i++) await client.eval(SCRIPT, 1, 'counter', 1);
    expect(await calls('evalsha')).toBe(shaBefore + 5);
    expect(await calls('eval')).toBe(evalBefore + 1);

    await server.admin('SCRIPT', 'FLUSH');
    expect(await client.eval(SCRIPT, 1, 'counter', 1)).toBe(8);
    expect(await calls('eval')).toBe(evalBefore + 2);
  });

  it('a script error is the script error, not a retry with the text', async () => {
    const evalBefore = await calls('eval');
    await expect(client.eval("return redis.error_reply('KEYTURN boom')", 0)).rejects.toThrow(/KEYTURN boom/);
    await expect(client.eval("return redis.error_reply('KEYTURN boom')", 0)).rejects.toThrow(/KEYTURN boom/);
    // The first call loaded it (NOSCRIPT, then EVAL); the second failed by SHA alone.
    expect(await calls('eval')).toBe(evalBefore + 1);
  });
});
