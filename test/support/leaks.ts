// Capture of everything Keyturn writes (Redis commands through MONITOR, Redis values under a prefix) and the
// check that no secret value appears in any of it, shared by the secret-leak tests.
import { Redis } from 'ioredis';
import { REDIS_URL } from './harness.ts';

/** Records every Redis command that touches keys under `prefix`, from now until `stop`. */
export async function monitorRedis(prefix: string): Promise<{ commands: string[]; stop(): void }> {
  const client = new Redis(REDIS_URL);
  const commands: string[] = [];
  const monitor = await client.monitor();
  monitor.on('monitor', (_time: string, args: string[]) => {
    if (args.some((a) => a.includes(prefix))) commands.push(args.join(' '));
  });
  return {
    commands,
    stop: () => {
      monitor.disconnect();
      client.disconnect();
    },
  };
}

/** Every value stored under `prefix`, whatever its type, as text. */
export async function redisValues(prefix: string): Promise<string[]> {
  const redis = new Redis(REDIS_URL);
  const values: string[] = [];
  try {
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
      cursor = next;
      for (const key of keys) {
        const type = await redis.type(key);
        if (type === 'string') values.push((await redis.get(key)) ?? '');
        else if (type === 'hash') values.push(JSON.stringify(await redis.hgetall(key)));
        else if (type === 'list') values.push(JSON.stringify(await redis.lrange(key, 0, -1)));
        else if (type === 'set') values.push(JSON.stringify(await redis.smembers(key)));
        else if (type === 'zset') values.push(JSON.stringify(await redis.zrange(key, 0, -1)));
        else if (type === 'stream') values.push(JSON.stringify(await redis.xrange(key, '-', '+')));
      }
    } while (cursor !== '0');
  } finally {
    redis.disconnect();
  }
  return values;
}

/** Throws naming the place when any secret (plain, base64 or URL-encoded) appears in any of the texts. */
export function assertNoSecrets(
  secrets: Iterable<string>,
  places: ReadonlyArray<readonly [string, readonly string[]]>,
): void {
  for (const secret of secrets) {
    if (secret.length < 16)
      throw new Error('a secret shorter than 16 characters proves little in a leak test');
    const forms = [secret, Buffer.from(secret).toString('base64'), encodeURIComponent(secret)];
    for (const [where, lines] of places) {
      for (const line of lines) {
        for (const form of forms) {
          if (line.includes(form))
            throw new Error(`a secret value appears in the ${where}: ${line.slice(0, 200)}…`);
        }
      }
    }
  }
}
