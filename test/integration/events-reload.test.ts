// Acceptance (issue 6): "A test service subscribed to /v1/events reconnects its PostgreSQL pool within one second of
// each rotation and never fails a query across 20 rotations of an alternating-users credential."
//
// The service is what a real one would be: a reader token bound to its credential, a pg.Pool built from the secret
// it reads, queries running all the time (several in flight), and on each `rotation` event of its credential a
// new pool from the new secret, put in place after its first query succeeded, the old one ended once its queries
// are done. The rotations run in a worker process of their own, so the events reach the API only through the
// audit stream.
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { sha256Hex } from '../../src/crypto/tokens.ts';
import {
  createAppRole,
  dropPrefix,
  type Keyturn,
  pgInfo,
  registerPgConnection,
  spawnWorker,
  startKeyturn,
  testEnv,
  type WorkerProcess,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';
import { openSse, type SseStream } from '../support/sse.ts';

const ROTATIONS = 20;
const QUERY_EVERY_MS = 10;
const MAX_IN_FLIGHT = 4;

interface Secret {
  username: string;
  password: string;
  version: string;
}

interface Reload {
  rotation: string;
  version: string;
  /** The rotation's end: its event's time (the audit event written in the rotation's final commit). */
  endedAt: number;
  /** When the event reached the service. */
  receivedAt: number;
  /** When the new pool's first query succeeded. */
  firstQueryAt: number;
  user: string;
}

/** The service under test: a pool that follows its credential's rotations. */
class Service {
  readonly reloads: Reload[] = [];
  readonly failures: string[] = [];
  readonly users = new Map<string, number>();
  readonly passwords = new Set<string>();
  queries = 0;
  #pool: pg.Pool | undefined;
  readonly #inFlight = new Map<pg.Pool, Set<Promise<unknown>>>();
  #ticker: NodeJS.Timeout | undefined;
  #reloading: Promise<void> = Promise.resolve();
  events: SseStream | undefined;

  readonly #url: string;
  readonly #token: string;
  readonly credential: string;
  #stopped = false;

  constructor(url: string, token: string, credential: string) {
    this.#url = url;
    this.#token = token;
    this.credential = credential;
  }

  async start(): Promise<void> {
    // Subscribe first, then read: a rotation between the two is then an event, not a stale secret.
    this.events = await openSse(`${this.#url}/v1/events?credential=${this.credential}`, {
      headers: { authorization: `Bearer ${this.#token}` },
      onMessage: (message) => {
        if (message.event !== 'rotation') return;
        const event = JSON.parse(message.data) as {
          credential: string;
          rotation: string;
          version: string;
          outcome: string;
          time: string;
        };
        if (event.credential !== this.credential || event.outcome !== 'succeeded') return;
        const receivedAt = Date.now();
        this.#reloading = this.#reloading.then(() => this.#reload(event, receivedAt));
      },
    });
    if (this.events.status !== 200)
      throw new Error(`subscribing failed: ${this.events.status} ${this.events.raw}`);
    const secret = await this.#readSecret();
    this.#pool = this.#newPool(secret);
    await this.#query(this.#pool);
    this.#ticker = setInterval(() => {
      const pool = this.#pool as pg.Pool;
      if ((this.#inFlight.get(pool)?.size ?? 0) < MAX_IN_FLIGHT) void this.#query(pool).catch(() => {});
    }, QUERY_EVERY_MS);
  }

  async #readSecret(): Promise<Secret> {
    const res = await fetch(`${this.#url}/v1/credentials/${this.credential}/secret`, {
      headers: { authorization: `Bearer ${this.#token}` },
    });
    if (res.status !== 200) throw new Error(`reading the secret failed: ${res.status} ${await res.text()}`);
    const secret = (await res.json()) as Secret;
    this.passwords.add(secret.password);
    return secret;
  }

  #newPool(secret: Secret): pg.Pool {
    const { host, port, database } = pgInfo();
    const pool = new pg.Pool({
      host,
      port,
      database,
      user: secret.username,
      password: secret.password,
      max: MAX_IN_FLIGHT,
      connectionTimeoutMillis: 5000,
    });
    pool.on('error', (err) => this.failures.push(`idle client: ${err.message}`));
    this.#inFlight.set(pool, new Set());
    return pool;
  }

  /** One query; a failure is recorded (and thrown, for the reload's first query). */
  #query(pool: pg.Pool): Promise<string> {
    const running = this.#inFlight.get(pool) as Set<Promise<unknown>>;
    const query = pool.query<{ user: string }>('SELECT current_user AS user').then(
      (result) => {
        const user = result.rows[0]?.user as string;
        this.queries++;
        this.users.set(user, (this.users.get(user) ?? 0) + 1);
        return user;
      },
      (err: Error) => {
        this.failures.push(`${pool.options.user}: ${err.message}`);
        throw err;
      },
    );
    running.add(query);
    void query.catch(() => {}).finally(() => running.delete(query));
    return query;
  }

  async #reload(
    event: { rotation: string; version: string; time: string },
    receivedAt: number,
  ): Promise<void> {
    let secret = await this.#readSecret();
    // The event is written in the same commit as the new version: a read after it returns that version.
    for (let i = 0; secret.version !== event.version && i < 20; i++) {
      await new Promise((r) => setTimeout(r, 20));
      secret = await this.#readSecret();
    }
    const next = this.#newPool(secret);
    const user = await this.#query(next);
    const firstQueryAt = Date.now();
    const old = this.#pool as pg.Pool;
    this.#pool = next;
    this.reloads.push({
      rotation: event.rotation,
      version: secret.version,
      endedAt: Date.parse(event.time),
      receivedAt,
      firstQueryAt,
      user,
    });
    // Gracefully: the queries the old pool is running finish first.
    await Promise.allSettled([...(this.#inFlight.get(old) ?? [])]);
    await old.end();
    this.#inFlight.delete(old);
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    if (this.#ticker) clearInterval(this.#ticker);
    await this.#reloading.catch(() => {});
    await this.events?.close();
    for (const [pool, running] of this.#inFlight) {
      await Promise.allSettled([...running]);
      await pool.end();
    }
  }
}

let dir: string;
let env: ReturnType<typeof testEnv>;
let kt: Keyturn;
let worker: WorkerProcess;
let service: Service | undefined;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kt-reload-'));
  const serviceToken = randomBytes(32).toString('base64url');
  const role = await createAppRole();
  const credential = `orders-db-${role.name}`;
  const file = join(dir, 'tokens.yaml');
  await writeFile(
    file,
    `tokens:\n  - {name: orders-api, sha256: ${sha256Hex(serviceToken)}, roles: [reader], credentials: [${credential}]}\n`,
  );
  env = testEnv({ KEYTURN_TOKENS_FILE: file });
  kt = await startKeyturn(env, { components: ['api'] });
  worker = spawnWorker(env);
  const connection = await registerPgConnection(kt);
  const created = await kt.api('POST', '/v1/credentials', {
    id: credential,
    connection,
    username: role.name,
    strategy: 'alternating-users',
    schedule: { every: '30d' },
  });
  expect(created.status, created.text).toBe(201);
  // The first rotation makes <name>_clone and hands it out.
  expect((await waitForRotation(kt, created.body.rotation.id)).status).toBe('succeeded');
  service = new Service(kt.url, serviceToken, credential);
});

afterAll(async () => {
  await service?.stop();
  await worker?.kill();
  await kt?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
  if (env) await dropPrefix(env.prefix);
});

it(`reloads its pool within a second of each of ${ROTATIONS} rotations, and no query ever fails`, async () => {
  const s = service as Service;
  const credential = s.credential;
  await s.start();
  const startedAt = Date.now();
  const rotations: Array<{ id: string; finishedAt: string; username: string }> = [];
  for (let i = 0; i < ROTATIONS; i++) {
    const res = await kt.api('POST', `/v1/credentials/${credential}/rotate`);
    expect(res.status, res.text).toBe(202);
    const rotation = await waitForRotation(kt, res.body.rotationId);
    expect(rotation.status).toBe('succeeded');
    rotations.push({ id: rotation.id, finishedAt: rotation.finishedAt, username: rotation.username });
    // The next rotation changes the password of the user the old pool logs in as: wait for the reload first.
    await waitFor(
      `the service to reload after rotation ${i + 1}`,
      async () => s.reloads.some((r) => r.rotation === rotation.id),
      5000,
      10,
    );
    // A few more queries on the new pool before the next rotation.
    await new Promise((r) => setTimeout(r, 50));
  }
  const elapsed = Date.now() - startedAt;
  await s.stop();

  const delays = s.reloads.map((r) => r.firstQueryAt - r.endedAt);
  const sorted = [...delays].sort((a, b) => a - b);
  const median = ((sorted[9] as number) + (sorted[10] as number)) / 2;
  console.log(
    `${ROTATIONS} rotations in ${elapsed} ms; ${s.queries} queries, ${s.failures.length} failed; users ${[
      ...s.users,
    ]
      .map(([u, n]) => `${u}×${n}`)
      .join(', ')}`,
  );
  console.log(
    `reload delay (rotation end → new pool's first successful query): min ${sorted[0]} ms, median ${median} ms, max ${sorted.at(-1)} ms; event delivery (rotation end → event received): max ${Math.max(...s.reloads.map((r) => r.receivedAt - r.endedAt))} ms`,
  );
  console.log(`all reload delays (ms): ${delays.join(', ')}`);

  expect(s.failures).toEqual([]);
  expect(s.queries).toBeGreaterThan(ROTATIONS * 5);
  expect(s.reloads.map((r) => r.rotation)).toEqual(rotations.map((r) => r.id));
  for (const [i, delay] of delays.entries())
    expect(delay, `reload after rotation ${i + 1}`).toBeLessThan(1000);
  // The rotation record's end agrees with the event's time.
  for (const [i, r] of s.reloads.entries()) {
    expect(Math.abs(r.endedAt - Date.parse(rotations[i]?.finishedAt as string))).toBeLessThan(1000);
  }
  // Alternating users: each reload moves the pool to the other user, the one the rotation made current.
  const role = credential.replace(/^orders-db-/, '');
  expect(s.reloads.map((r) => r.user)).toEqual(rotations.map((r) => r.username));
  for (let i = 1; i < s.reloads.length; i++) expect(s.reloads[i]?.user).not.toBe(s.reloads[i - 1]?.user);
  expect(new Set(s.reloads.map((r) => r.user))).toEqual(new Set([role, `${role}_clone`]));
  // Nothing secret in the event stream: none of the passwords the service used, no password field at all.
  const raw = s.events?.raw ?? '';
  expect(s.passwords.size).toBe(ROTATIONS + 1);
  for (const password of s.passwords) expect(raw.includes(password)).toBe(false);
  expect(raw).not.toMatch(/password/i);
}, 120_000);
