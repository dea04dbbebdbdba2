// One server of the read bench (read.ts), in a child process of its own: `bare`, `floor` or `keyturn`. Each child
// has its own event loop and the load generator (autocannon, in the parent) has another, so no server pays for the
// load generator or for a neighbour. The parent sends one message with the settings and gets back {url, path,
// token}; it stops the child with 'stop' (Keyturn closes cleanly and drops its keys).
//
// bare     Fastify, the same path, a SHA-256 bearer check, a JSON answer of the size of Keyturn's.
// floor    the same plus what an audited read cannot avoid: one HMGET, one AES-256-GCM open (crypto/envelope.ts)
//          and one XADD of an audit event, through ioredis with enableAutoPipelining.
// keyturn  createRuntime (API and workers in one process, as `npm start`), local store, a webhook credential that
//          has a version, read by a reader token from a tokens file; log level `info` (the default), to stdout,
//          which the parent discards.
import { createHash, generateKeyPairSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Fastify from 'fastify';
import { Redis } from 'ioredis';
import { loadConfig } from '../../src/config/config.ts';
import { envEnvelope } from '../../src/keys/index.ts';
import { createLogger } from '../../src/logging/logger.ts';
import { createRuntime } from '../../src/runtime.ts';
import { startWebhookServer } from '../support/webhook-server.ts';

export interface ServerSettings {
  kind: 'bare' | 'floor' | 'keyturn';
  redisUrl: string;
  prefix: string;
  /** bare and floor: the answer to send (Keyturn's shape and size, made up values). */
  body?: Record<string, unknown>;
}

export interface ServerReady {
  url: string;
  path: string;
  token: string;
}

const sha256 = (text: string) => createHash('sha256').update(text, 'utf8').digest();
const ID = 'bench-read';
const PATH = `/v1/credentials/${ID}/secret`;

async function bareOrFloor(
  settings: ServerSettings,
): Promise<{ ready: ServerReady; stop: () => Promise<void> }> {
  const token = randomBytes(32).toString('base64url');
  const expected = sha256(token);
  const app = Fastify({ logger: false });
  const authorized = (header: string | undefined) => {
    if (!header?.startsWith('Bearer ')) return false;
    return timingSafeEqual(sha256(header.slice(7)), expected);
  };
  let redis: Redis | undefined;
  if (settings.kind === 'bare') {
    const body = JSON.stringify(settings.body);
    app.get('/v1/credentials/:id/secret', async (request, reply) => {
      if (!authorized(request.headers.authorization)) return reply.code(401).send({ error: 'unauthorized' });
      return reply.header('content-type', 'application/json; charset=utf-8').send(body);
    });
  } else {
    redis = new Redis(settings.redisUrl, { enableAutoPipelining: true });
    const envelope = envEnvelope(randomBytes(32));
    const key = `${settings.prefix}:floor:cred:${ID}`;
    const auditKey = `${settings.prefix}:floor:audit`;
    const { password, username, ...rest } = settings.body as { password: string; username: string };
    await redis.hset(key, {
      meta: JSON.stringify(rest),
      sealed: JSON.stringify(
        await envelope.encrypt(JSON.stringify({ username, password }), {
          secret: `cred/${ID}`,
          version: 'bench',
        }),
      ),
    });
    const r = redis;
    app.get<{ Params: { id: string } }>('/v1/credentials/:id/secret', async (request, reply) => {
      if (!authorized(request.headers.authorization)) return reply.code(401).send({ error: 'unauthorized' });
      const [meta, sealed] = await r.hmget(
        `${settings.prefix}:floor:cred:${request.params.id}`,
        'meta',
        'sealed',
      );
      if (!meta || !sealed) return reply.code(404).send({ error: 'not found' });
      const secret = JSON.parse(
        await envelope.decrypt(JSON.parse(sealed), { secret: `cred/${request.params.id}`, version: 'bench' }),
      );
      const { version } = JSON.parse(meta) as { version: string };
      await r.xadd(
        auditKey,
        '*',
        'e',
        JSON.stringify({
          time: new Date().toISOString(),
          actor: 'bench-reader',
          action: 'secret.read',
          outcome: 'success',
          credential: request.params.id,
          details: { version },
        }),
      );
      return { ...JSON.parse(meta), ...secret };
    });
  }
  const url = await app.listen({ port: 0, host: '127.0.0.1' });
  return {
    ready: { url, path: PATH, token },
    stop: async () => {
      await app.close();
      if (redis) {
        await redis.del(`${settings.prefix}:floor:cred:${ID}`, `${settings.prefix}:floor:audit`);
        redis.disconnect();
      }
    },
  };
}

async function keyturn(settings: ServerSettings): Promise<{ ready: ServerReady; stop: () => Promise<void> }> {
  const adminToken = randomBytes(32).toString('base64url');
  const readerToken = randomBytes(32).toString('base64url');
  const tokensFile = join(tmpdir(), `${settings.prefix}-tokens.yaml`);
  writeFileSync(
    tokensFile,
    `tokens:\n  - name: bench-reader\n    sha256: ${sha256(readerToken).toString('hex')}\n    roles: [reader]\n    credentials: [${ID}]\n`,
  );
  const config = loadConfig({
    REDIS_URL: settings.redisUrl,
    KEYTURN_PREFIX: settings.prefix,
    KEYTURN_ADMIN_TOKEN: adminToken,
    KEYTURN_TOKENS_FILE: tokensFile,
    KEYTURN_MASTER_KEY: randomBytes(32).toString('base64'),
    KEYTURN_AUDIT_SIGNING_KEY: String(
      generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }),
    ),
    PORT: '0',
    HOST: '127.0.0.1',
    // The bench measures throughput, not the rate limit (which still runs: it counts every request).
    KEYTURN_RATE_LIMIT_MAX: '1000000',
  });
  // The default level, to stdout (the parent discards it): what `npm start` does.
  const runtime = await createRuntime({
    config,
    logger: createLogger({ level: 'info', format: 'json' }),
    adminToken,
    masterKey: config.masterKey!,
  });
  const signingKey = randomBytes(32).toString('base64url');
  const webhook = await startWebhookServer({ signingKey, keyId: 'kid-bench' });
  const url = (await runtime.start()) as string;
  const admin = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(`${url}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${adminToken}`,
        ...(body ? { 'content-type': 'application/json' } : {}),
      },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
    const json = (await res.json()) as any;
    if (res.status >= 300) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  };
  await admin('POST', '/v1/connections', {
    id: 'bench-webhook',
    type: 'webhook',
    host: '127.0.0.1',
    port: webhook.port,
    tls: { mode: 'disable' },
    admin: { username: 'kid-bench', password: signingKey },
  });
  const created = await admin('POST', '/v1/credentials', {
    id: ID,
    connection: 'bench-webhook',
    username: 'bench_reader_user',
    strategy: 'single-user',
    schedule: { every: '30d' },
  });
  for (;;) {
    const r = await admin('GET', `/v1/rotations/${created.rotation.id}`);
    if (r.status === 'succeeded') break;
    if (r.status === 'failed') throw new Error(`the first rotation failed: ${JSON.stringify(r.error)}`);
    await new Promise((res) => setTimeout(res, 20));
  }
  return {
    ready: { url, path: PATH, token: readerToken },
    stop: async () => {
      await runtime.close();
      await webhook.close();
      const redis = new Redis(settings.redisUrl);
      let cursor = '0';
      do {
        const [n, keys] = await redis.scan(cursor, 'MATCH', `${settings.prefix}:*`, 'COUNT', 1000);
        cursor = n;
        if (keys.length) await redis.del(...keys);
      } while (cursor !== '0');
      redis.disconnect();
    },
  };
}

process.once('message', async (settings: ServerSettings) => {
  try {
    const server = settings.kind === 'keyturn' ? await keyturn(settings) : await bareOrFloor(settings);
    process.on('message', async (msg) => {
      // The CPU this process has used so far (every thread: Keyturn's sealer thread included), in microseconds.
      if (msg === 'cpu') {
        const { user, system } = process.cpuUsage();
        process.send?.({ cpu: user + system });
        return;
      }
      if (msg !== 'stop') return;
      await server.stop().catch(() => {});
      process.exit(0);
    });
    process.send?.({ ready: server.ready });
  } catch (err) {
    process.send?.({ error: (err as Error).stack ?? String(err) });
    process.exit(1);
  }
});
