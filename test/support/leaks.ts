// Capture of everything Keyturn writes (Redis commands through MONITOR, Redis values under a prefix) and the
// check that no secret value appears in any of it, shared by the secret-leak tests.
import { connect } from 'node:net';
import { Redis } from 'ioredis';
import { REDIS_CLUSTER_HOSTS, REDIS_URL } from './harness.ts';

/**
 * Records every Redis command that touches keys under `prefix`, from now until `stop`. A plain socket rather than
 * ioredis's monitor(): ioredis enters its monitoring state a microtask after MONITOR's OK, so on a busy Redis (other
 * tests, other suites) a monitor line in the same packet as that OK failed the whole suite with "Command queue state
 * error"; it also unescaped only quotes.
 */
export async function monitorRedis(prefix: string): Promise<{ commands: string[]; stop(): void }> {
  // In the cluster run, every node: Keyturn's keys spread over all of them, and the machine's own Redis sees none.
  const commands: string[] = [];
  const monitors = await Promise.all(nodeUrls().map((url) => monitorNode(url, prefix, commands)));
  return {
    commands,
    stop: () => {
      for (const m of monitors) m.stop();
    },
  };
}

/** The Redis URLs Keyturn writes to in this run: the cluster's nodes, or the single Redis. */
function nodeUrls(): string[] {
  if (!REDIS_CLUSTER_HOSTS) return [REDIS_URL];
  const credentials = new URL(REDIS_URL);
  const auth = credentials.password ? `${credentials.username}:${credentials.password}@` : '';
  return REDIS_CLUSTER_HOSTS.split(',').map((host) => `redis://${auth}${host.trim()}`);
}

async function monitorNode(nodeUrl: string, prefix: string, commands: string[]): Promise<{ stop(): void }> {
  const url = new URL(nodeUrl);
  const socket = connect(Number(url.port || 6379), url.hostname || '127.0.0.1');
  socket.setEncoding('latin1'); // MONITOR writes ASCII (anything else as \xHH); latin1 keeps every byte as one char
  const password = url.password ? decodeURIComponent(url.password) : '';
  const username = url.username ? decodeURIComponent(url.username) : '';
  let okToWait = password ? 2 : 1; // AUTH's OK, then MONITOR's
  let buffer = '';
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      for (let end = buffer.indexOf('\r\n'); end !== -1; end = buffer.indexOf('\r\n')) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (line.startsWith('-')) reject(new Error(`Redis refused MONITOR: ${line.slice(1)}`));
        else if (okToWait > 0 && line === '+OK') {
          okToWait -= 1;
          if (okToWait === 0) resolve();
        } else if (line.startsWith('+')) {
          const args = monitorArgs(line);
          if (args.some((a) => a.includes(prefix))) commands.push(args.join(' '));
        }
      }
    });
    const auth = username ? ['AUTH', username, password] : ['AUTH', password];
    socket.write(`${password ? resp(auth) : ''}${resp(['MONITOR'])}`);
  });
  socket.on('error', () => {}); // a reset after stop() or at the end of the run
  return { stop: () => socket.destroy() };
}

function resp(args: string[]): string {
  return `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`;
}

/** The arguments of a MONITOR line (`+<time> [<db> <client>] "SET" "k" "v"`), unescaped as Redis escaped them. */
function monitorArgs(line: string): string[] {
  const args: string[] = [];
  let i = line.indexOf('"');
  while (i !== -1 && i < line.length) {
    const bytes: number[] = [];
    i += 1;
    while (i < line.length && line[i] !== '"') {
      if (line[i] === '\\' && i + 1 < line.length) {
        const c = line[i + 1] as string;
        if (c === 'x') {
          bytes.push(Number.parseInt(line.slice(i + 2, i + 4), 16));
          i += 4;
          continue;
        }
        const escaped: Record<string, number> = { n: 10, r: 13, t: 9, a: 7, b: 8 };
        bytes.push(escaped[c] ?? c.charCodeAt(0));
        i += 2;
        continue;
      }
      bytes.push(line.charCodeAt(i));
      i += 1;
    }
    args.push(Buffer.from(bytes).toString('utf8'));
    i = line.indexOf('"', i + 1);
  }
  return args;
}

/** Every value stored under `prefix`, whatever its type, as text. */
export async function redisValues(prefix: string): Promise<string[]> {
  const values: string[] = [];
  for (const url of nodeUrls()) values.push(...(await nodeValues(url, prefix)));
  return values;
}

async function nodeValues(url: string, prefix: string): Promise<string[]> {
  const redis = new Redis(url);
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

/**
 * The agent's output (its JSON log lines, its stderr, and what a reload command printed) against every password it
 * rendered and the token it sent: none may appear, in any form assertNoSecrets knows. The token is checked too.
 */
export function assertNoSecretsInAgentOutput(
  secrets: Iterable<string>,
  places: ReadonlyArray<readonly [string, readonly string[]]>,
): void {
  const all = [...secrets];
  if (all.length < 2) throw new Error('an agent leak check needs the token and at least one password');
  assertNoSecrets(all, places);
  // A redacted field is fine; a field named like a secret holding anything else is not.
  for (const [where, lines] of places) {
    for (const line of lines) {
      if (/"(password|token|authorization)":"(?!\[redacted\])/i.test(line))
        throw new Error(`a secret-named field appears in the ${where}: ${line.slice(0, 200)}…`);
    }
  }
}
