// Pools that follow rotations (SPEC "Client": createPgPool, createMysqlPool). A pool logs in with one user and
// password; a rotation changes the password (single-user) or the user (alternating-users). So each new version gets a
// new pool: new queries go to it, and the old one is closed once its queries in flight have finished, never cut.
// A login refused with a wrong password (a rotation's `set` landed before the watch saw it) reads the secret again and
// retries the query once on the new pool.
import type { SecretFields } from './connection.ts';
import type { KeyturnClient } from './index.ts';

/** What the helpers return: a pool-like object that keeps serving queries across rotations. */
export interface RotatingPool<Q extends (...args: never[]) => Promise<unknown>> {
  query: Q;
  /** The version the pool logs in with now. */
  readonly version: string;
  /** Pools closed so far (old versions, drained). */
  readonly closedPools: number;
  /** Stops following rotations and closes every pool (after their queries). */
  end(): Promise<void>;
}

interface Generation<P> {
  pool: P;
  version: string;
  active: number;
  retiring: boolean;
}

/** The rotation-following part, for any driver: `make` opens a pool for a secret, `close` ends one. */
class Rotating<P> {
  #current: Generation<P> | undefined;
  #ready: Promise<void>;
  #closed = 0;
  #watch: { close(): void };
  #ending = false;
  readonly #make: (secret: SecretFields) => P;
  readonly #close: (pool: P) => Promise<void>;
  readonly #client: KeyturnClient;
  readonly #id: string;

  constructor(
    client: KeyturnClient,
    id: string,
    make: (secret: SecretFields) => P,
    close: (pool: P) => Promise<void>,
  ) {
    this.#client = client;
    this.#id = id;
    this.#make = make;
    this.#close = close;
    let ready: () => void = () => {};
    this.#ready = new Promise<void>((resolve) => {
      ready = resolve;
    });
    this.#watch = client.watch(id, (secret) => {
      this.#switchTo(secret);
      ready();
    });
  }

  get version(): string {
    return this.#current?.version ?? '';
  }

  get closedPools(): number {
    return this.#closed;
  }

  #switchTo(secret: SecretFields): void {
    if (this.#ending || this.#current?.version === secret.version) return;
    const old = this.#current;
    this.#current = { pool: this.#make(secret), version: secret.version, active: 0, retiring: false };
    if (old) this.#retire(old);
  }

  #retire(generation: Generation<P>): void {
    generation.retiring = true;
    if (generation.active === 0) {
      this.#closed += 1;
      void this.#close(generation.pool).catch(() => {});
    }
  }

  /** Runs `fn` on the current pool; a refused login reads the secret again and retries once on the new pool. */
  async run<T>(fn: (pool: P) => Promise<T>, refusedLogin: (err: unknown) => boolean): Promise<T> {
    await this.#ready;
    for (let attempt = 0; ; attempt++) {
      const generation = this.#current as Generation<P>;
      generation.active += 1;
      try {
        return await fn(generation.pool);
      } catch (err) {
        if (attempt > 0 || !refusedLogin(err)) throw err;
        // The password changed downstream before this process saw the new version: read it now (no cache).
        const secret = await this.#client.getSecret(this.#id, { fresh: true });
        if (secret.version === generation.version) throw err;
        this.#switchTo(secret);
      } finally {
        generation.active -= 1;
        if (generation.retiring && generation.active === 0) {
          this.#closed += 1;
          void this.#close(generation.pool).catch(() => {});
        }
      }
    }
  }

  async end(): Promise<void> {
    this.#ending = true;
    this.#watch.close();
    const current = this.#current;
    if (current) {
      current.retiring = true;
      if (current.active === 0) await this.#close(current.pool);
    }
  }
}

/** The pool-like object over a Rotating: `query` runs on the current pool; `refusedCode` is the driver's wrong-password. */
function poolOf<P, R>(
  rotating: Rotating<P>,
  query: (pool: P, text: string, values?: unknown[]) => Promise<R>,
  refusedCode: string,
): RotatingPool<(text: string, values?: unknown[]) => Promise<R>> {
  return {
    query: (text, values) =>
      rotating.run(
        (pool) => query(pool, text, values),
        (err) => (err as { code?: string }).code === refusedCode,
      ),
    get version() {
      return rotating.version;
    },
    get closedPools() {
      return rotating.closedPools;
    },
    end: () => rotating.end(),
  };
}

/**
 * A `pg` pool for credential `id` that follows its rotations: `query` as pg's `Pool#query`. `poolConfig` is pg's pool
 * configuration without user and password (host, port and database come from the secret unless given).
 */
export async function createPgPool(
  client: KeyturnClient,
  id: string,
  poolConfig: Record<string, unknown> = {},
): Promise<RotatingPool<(text: string, values?: unknown[]) => Promise<import('pg').QueryResult>>> {
  const { default: pg } = await import('pg');
  const rotating = new Rotating<import('pg').Pool>(
    client,
    id,
    (s) => {
      const pool = new pg.Pool({
        host: s.host,
        port: s.port,
        ...(s.database ? { database: s.database } : {}),
        ...poolConfig,
        user: s.username,
        password: s.password,
      });
      pool.on('error', () => {}); // an idle client's connection dropped: the pool replaces it
      return pool;
    },
    (pool) => pool.end(),
  );
  return poolOf(rotating, (pool, text, values) => pool.query(text, values), '28P01');
}

/**
 * A `mysql2/promise` pool for credential `id` that follows its rotations: `query` as mysql2's `Pool#query` (it
 * resolves to `[rows, fields]`). `poolConfig` is mysql2's pool configuration without user and password.
 */
export async function createMysqlPool(
  client: KeyturnClient,
  id: string,
  poolConfig: Record<string, unknown> = {},
): Promise<RotatingPool<(sql: string, values?: unknown[]) => Promise<unknown>>> {
  const mysql = await import('mysql2/promise');
  type Pool = ReturnType<typeof mysql.createPool>;
  const rotating = new Rotating<Pool>(
    client,
    id,
    (s) =>
      mysql.createPool({
        host: s.host,
        port: s.port,
        ...(s.database ? { database: s.database } : {}),
        ...poolConfig,
        user: s.username,
        password: s.password,
      }),
    (pool) => pool.end(),
  );
  return poolOf(rotating, (pool, sql, values) => pool.query(sql, values), 'ER_ACCESS_DENIED_ERROR');
}

/**
 * Keeps an `ioredis` connection logged in as credential `id` follows its rotations: each new version is sent as AUTH
 * on the open connection and kept in its options for reconnects (Redis keeps a connection logged in when its
 * password changes; an alternating pair's new user takes over before the previous one is disabled). `close()` stops.
 */
export function followRedisAuth(
  client: KeyturnClient,
  id: string,
  redis: import('ioredis').Redis,
  onError: (err: Error) => void = () => {},
): { close(): void } {
  return client.watch(
    id,
    async (s) => {
      redis.options.username = s.username;
      redis.options.password = s.password;
      if (redis.status === 'ready') await redis.auth(s.username, s.password);
    },
    onError,
  );
}
