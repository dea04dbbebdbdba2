// Failover without harm (SPEC, "Redis topologies"), against a real master, replica and three sentinels and the
// password-checking PostgreSQL: alternating-users rotations run one after another while clients read the secret and
// log in with it at once; the master fails over (SENTINEL FAILOVER, or SIGKILL) in the middle. Every rotation ends
// once, the final secret logs in, no login right after a read fails, and the API answers 503 with Retry-After or
// succeeds, never anything else. Keyturn's workers resume, and it follows the new master.
import { spawn } from 'node:child_process';
import { connect } from 'node:net';
import { resolve } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  type ApiResponse,
  canLogin,
  importCredential,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  type TestEnv,
  testEnv,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';
import { type SentinelSet, startSentinelSet } from '../support/redis-sentinel.ts';

const BIN = resolve(import.meta.dirname, '../../bin/keyturn.js');

let set: SentinelSet;
let env: TestEnv;
let kt: Keyturn;
let connection: string;
/** Every API answer of the test that was neither a success nor a 503 with Retry-After. */
const wrongAnswers: string[] = [];

beforeAll(async () => {
  // min-replicas-to-write 1, as production needs: without it the old master goes on taking writes after SENTINEL
  // FAILOVER promoted its replica and before it is turned into a replica itself, and those writes are lost (this
  // test saw an accepted rotation vanish that way). With it, the old master refuses them (NOREPLICAS, a 503).
  set = await startSentinelSet({
    dataArgs: ['--min-replicas-to-write', '1', '--min-replicas-max-lag', '10'],
  });
  env = testEnv({
    REDIS_URL: '',
    REDIS_SENTINEL_HOSTS: set.sentinelHosts,
    REDIS_SENTINEL_MASTER_NAME: set.masterName,
    // Durable write-ahead on: the pending secret is on the replica before PostgreSQL changes.
    KEYTURN_REDIS_MIN_REPLICAS_ACK: '1',
    KEYTURN_REDIS_WAIT_TIMEOUT_MS: '1000',
    KEYTURN_ROTATION_ATTEMPTS: '6',
    KEYTURN_ROTATION_BACKOFF_MS: '500',
  });
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
  connection = await registerPgConnection(kt);
});
afterAll(async () => {
  if (process.env.KT_DEBUG) for (const l of kt?.logs ?? []) if (/"level":[4-6]0/.test(l)) console.log(l);
  await kt?.close();
  await set?.stop();
});

/** An API call that may meet the failover: 503 must carry Retry-After; anything else but 2xx is recorded. */
async function call<T = any>(
  method: string,
  path: string,
  expected: number[],
): Promise<ApiResponse<T> | undefined> {
  const res = await kt.api<T>(method, path);
  if (expected.includes(res.status)) return res;
  if (res.status === 503 && (res.body as any)?.error?.code === 'unavailable') {
    if (!res.headers.get('retry-after')) wrongAnswers.push(`${method} ${path}: 503 without Retry-After`);
    return undefined;
  }
  wrongAnswers.push(`${method} ${path}: ${res.status} ${res.text.slice(0, 300)}`);
  return undefined;
}

interface Outcome {
  rotations: { id: string; status: string }[];
  reads: number;
  logins: number;
  failedLogins: string[];
  unavailable: number;
  failover: { from: number; to: number; ms: number };
}

/**
 * Rotations of one alternating-users credential one after another (rotate, wait, rotate…) while three clients read
 * the secret and log in with it; `disrupt` runs once the second rotation is under way.
 */
async function rotateThrough(
  disrupt: () => Promise<{ from: number; to: number; ms: number }>,
  rotationsWanted = 4,
): Promise<Outcome & { credential: string }> {
  const cred = await importCredential(kt, connection, { strategy: 'alternating-users' });
  let running = true;
  const out: Outcome = {
    rotations: [],
    reads: 0,
    logins: 0,
    failedLogins: [],
    unavailable: 0,
    failover: { from: 0, to: 0, ms: 0 },
  };
  const client = async () => {
    while (running) {
      const res = await call('GET', `/v1/credentials/${cred.id}/secret`, [200]);
      if (!res) {
        out.unavailable += 1;
        await new Promise((r) => setTimeout(r, 100)); // a client backing off after a 503, as Retry-After asks
        continue;
      }
      out.reads += 1;
      const { username, password } = res.body;
      if (await canLogin(username, password)) out.logins += 1;
      else out.failedLogins.push(`${username} (version ${res.body.version})`);
    }
  };
  const clients = [client(), client(), client()];
  let disruption: Promise<void> | undefined;
  try {
    for (let i = 0; i < rotationsWanted; i++) {
      let rotationId: string | undefined;
      await waitFor(
        'the rotation request to be accepted',
        async () => {
          const res = await call('POST', `/v1/credentials/${cred.id}/rotate`, [202]);
          rotationId = res?.body.rotationId;
          return rotationId;
        },
        60_000,
        200,
      );
      if (i === 1) {
        disruption = disrupt().then((f) => {
          out.failover = f;
        });
      }
      const done = await waitForRotation(kt, rotationId as string, 90_000);
      out.rotations.push({ id: done.id, status: done.status });
    }
    await disruption;
  } finally {
    running = false;
    await Promise.all(clients);
  }
  return { ...out, credential: cred.id };
}

/** Each rotation ended once: one terminal audit event, matching its record. */
async function checkEndedOnce(outcome: Outcome & { credential: string }): Promise<void> {
  // Read again after the failover: a status read from the old master just before it was demoted may be one the new
  // master never received (writes in flight are lost with it). Such a rotation is resumed from its last replicated
  // step by its job, and must still end exactly once.
  for (const r of outcome.rotations) {
    const ended = await waitFor(
      `rotation ${r.id} to be ended on the new master`,
      async () => {
        const res = await kt.api('GET', `/v1/rotations/${r.id}`);
        return res.status === 200 && ['succeeded', 'failed'].includes(res.body.status) ? res.body : undefined;
      },
      120_000,
      250,
    );
    r.status = ended.status;
  }
  // Only the terminal events: every secret read is audited too, and the clients make a thousand of them.
  const events: any[] = [];
  for (const action of ['rotation.succeeded', 'rotation.failed']) {
    const page = await kt.api(
      'GET',
      `/v1/audit?credential=${outcome.credential}&action=${action}&limit=1000`,
    );
    expect(page.body.next ?? null, 'one page of terminal events').toBeNull();
    events.push(...(page.body.events as any[]));
  }
  for (const r of outcome.rotations) {
    expect(['succeeded', 'failed']).toContain(r.status);
    const ends = events.filter(
      (e) => e.rotation === r.id && ['rotation.succeeded', 'rotation.failed'].includes(e.action),
    );
    expect(ends.map((e) => e.action)).toEqual([`rotation.${r.status}`]);
    const record = (await kt.api('GET', `/v1/rotations/${r.id}`)).body;
    expect(record.status).toBe(r.status);
  }
  // The final secret logs in.
  const secret = (await kt.api('GET', `/v1/credentials/${outcome.credential}/secret`)).body;
  expect(await canLogin(secret.username, secret.password)).toBe(true);
  const cred = (await kt.api('GET', `/v1/credentials/${outcome.credential}`)).body;
  expect(cred.status).toBe('active');
}

describe('Sentinel failover during rotations', () => {
  beforeEach(() => {
    wrongAnswers.length = 0;
  });
  it('a clean SENTINEL FAILOVER: every rotation ends once, every login after a read succeeds', async () => {
    const outcome = await rotateThrough(() => set.failover());
    console.log(
      `[ha] SENTINEL FAILOVER ${outcome.failover.from} -> ${outcome.failover.to} in ${outcome.failover.ms} ms; rotations ${outcome.rotations.map((r) => r.status).join(',')}; reads ${outcome.reads}, logins ${outcome.logins}, 503s ${outcome.unavailable}`,
    );
    expect(outcome.failover.to).not.toBe(outcome.failover.from);
    expect(outcome.failedLogins, 'logins that failed right after a read').toEqual([]);
    expect(wrongAnswers, 'answers other than the expected status or 503 unavailable').toEqual([]);
    expect(outcome.logins).toBeGreaterThan(0);
    await checkEndedOnce(outcome);
  }, 240_000);

  it('the master SIGKILLed: every rotation ends once, every login after a read succeeds', async () => {
    const outcome = await rotateThrough(async () => {
      const f = await set.killMaster();
      // The killed node comes back empty as a replica of the new master: replicas acknowledge again.
      await set.restart(f.from);
      return f;
    });
    console.log(
      `[ha] SIGKILL master ${outcome.failover.from} -> ${outcome.failover.to} in ${outcome.failover.ms} ms; rotations ${outcome.rotations.map((r) => r.status).join(',')}; reads ${outcome.reads}, logins ${outcome.logins}, 503s ${outcome.unavailable}`,
    );
    expect(outcome.failedLogins, 'logins that failed right after a read').toEqual([]);
    expect(wrongAnswers, 'answers other than the expected status or 503 unavailable').toEqual([]);
    expect(outcome.logins).toBeGreaterThan(0);
    await checkEndedOnce(outcome);
  }, 240_000);

  it('workers pause and resume: a rotation requested during the outage completes after it', async () => {
    const cred = await importCredential(kt, connection, { strategy: 'alternating-users' });
    // The killed master comes back as soon as a new one is elected: with min-replicas-to-write 1 the new master takes
    // writes only once it has a replica again.
    const from = await set.masterPort();
    const killed = set.killMaster().then(async (f) => {
      await set.restart(f.from);
      return f;
    });
    // Asked as soon as the master's process is gone (its port refuses connections), so the request meets the outage:
    // the failover takes at least the sentinels' down-after (1 s) and the restart of a replica. (Waiting for /readyz to
    // say 503 instead could take longer than the outage itself on a loaded machine: its probe waits out a timeout.)
    await waitFor(
      'the master to be gone',
      async () => ((await refuses(from)) ? true : undefined),
      10_000,
      10,
    );
    // Asked while no master takes writes: 503 with Retry-After until one does, then accepted.
    const statuses: number[] = [];
    const rotationId = await waitFor(
      'the rotation request to be accepted',
      async () => {
        const res = await call('POST', `/v1/credentials/${cred.id}/rotate`, [202]);
        statuses.push(res?.status ?? 503);
        return res?.body.rotationId as string | undefined;
      },
      60_000,
      100,
    );
    const f = await killed;
    const done = await waitForRotation(kt, rotationId, 90_000);
    console.log(`[ha] outage: SIGKILL failover in ${f.ms} ms; rotate answered ${statuses.join(',')}`);
    expect(done.status).toBe('succeeded');
    expect(statuses[0]).toBe(503);
    expect(wrongAnswers).toEqual([]);
    const secret = (await kt.api('GET', `/v1/credentials/${cred.id}/secret`)).body;
    expect(await canLogin(secret.username, secret.password)).toBe(true);
  }, 180_000);

  it('follows the master: /readyz and `keyturn status` name the new master after a failover', async () => {
    const f = await set.failover();
    const ready = await waitFor('/readyz to name the new master', async () => {
      const res = await kt.api('GET', '/readyz');
      return res.status === 200 && res.body.checks.redis.writeNodes[0] === `127.0.0.1:${f.to}`
        ? res.body
        : undefined;
    });
    expect(ready.checks.redis.topology).toBe(`sentinel master "${set.masterName}" via ${set.sentinelHosts}`);
    expect(ready.checks.redis.writeNodes).toEqual([`127.0.0.1:${f.to}`]);

    const child = spawn(process.execPath, [BIN, 'status'], {
      env: { PATH: process.env.PATH ?? '', KEYTURN_URL: kt.url, KEYTURN_TOKEN: env.adminToken },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (c: Buffer) => {
      output += String(c);
    });
    child.stderr.on('data', (c: Buffer) => {
      output += String(c);
    });
    const code = await new Promise<number | null>((done) => child.once('exit', (c) => done(c)));
    expect(code, output).toBe(0);
    expect(output).toContain(`redis       sentinel master "${set.masterName}" via ${set.sentinelHosts}`);
    expect(output).toContain(`writes to   127.0.0.1:${f.to}`);
  });
});

/** Whether nothing listens on a loopback port any more (a connection is refused). */
function refuses(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', () => resolve(true));
  });
}
