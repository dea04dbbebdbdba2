// Issue 14 guard: I1 with the read path's cache, under concurrent reads during single-user rotations whose worker is
// SIGKILLed. Two API replicas read (each with its own in-process open cache, warmed with the old version first); a
// worker process dies at a point of the protocol; every read, while no worker runs and while a new worker finishes
// the rotation, must give a password that logs in to the password-checking PostgreSQL, and once the downstream holds
// the new password no read may give the old version. The kill points chosen leave the downstream unchanged from the
// kill to the end (the rescuing worker finds the pending password already set), so a read checked by a login a
// moment later is judged against the same downstream: no race in the test itself.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  canLogin,
  dropPrefix,
  importCredential,
  type Keyturn,
  registerPgConnection,
  spawnWorker,
  startKeyturn,
  testEnv,
  type WorkerProcess,
  waitForRotation,
} from '../support/harness.ts';

const env = testEnv();
let replicas: Keyturn[] = [];
let connection: string;
const workers: WorkerProcess[] = [];

beforeAll(async () => {
  replicas = [
    await startKeyturn(env, { components: ['api'] }),
    await startKeyturn(env, { components: ['api'] }),
  ];
  connection = await registerPgConnection(replicas[0]!);
});
afterAll(async () => {
  await Promise.all(workers.map((w) => w.kill('SIGKILL')));
  await Promise.all(replicas.map((kt) => kt.close()));
  await dropPrefix(env.prefix);
});

interface Seen {
  version: string;
  loggedIn: boolean;
}

/** One read from a replica, checked at once by logging in with what it gave. */
async function readAndLogIn(kt: Keyturn, id: string): Promise<Seen> {
  const res = await kt.api('GET', `/v1/credentials/${id}/secret`);
  expect(res.status).toBe(200);
  return { version: res.body.version, loggedIn: await canLogin(res.body.username, res.body.password) };
}

/** `n` reads at once, spread over the replicas. */
function burst(id: string, n = 16): Promise<Seen[]> {
  return Promise.all(Array.from({ length: n }, (_, i) => readAndLogIn(replicas[i % replicas.length]!, id)));
}

// Points after which the downstream holds the new password and nothing changes it again: the set step's change
// landed but was not recorded; set recorded; test passed; the store promoted but the credential not yet written.
const DOWNSTREAM_CHANGED = ['set-after-downstream', 'after-set', 'after-test', 'finish-after-promote'];

describe('I1 with cached reads: concurrent reads from two API replicas while a rotation worker is SIGKILLed', () => {
  it.each(DOWNSTREAM_CHANGED)(
    'killed at %s: every read logs in, none gives the old version',
    async (point) => {
      const {
        id,
        password: oldPassword,
        role,
      } = await importCredential(replicas[0]!, connection, {
        idPrefix: 'readkill',
      });
      // Warm both replicas: the old version opened and kept by each.
      const warm = await burst(id);
      expect(warm.every((s) => s.loggedIn)).toBe(true);
      const oldVersion = warm[0]!.version;

      const doomed = spawnWorker(env, { KEYTURN_FAILPOINTS: `${point}=kill` });
      workers.push(doomed);
      const rotate = await replicas[0]!.api('POST', `/v1/credentials/${id}/rotate`);
      expect(rotate.status).toBe(202);
      expect(await doomed.exited).toBe('SIGKILL');
      expect(await canLogin(role.name, oldPassword)).toBe(false);

      // No worker runs: the downstream is frozen with the new password.
      const whileDead = await burst(id);
      expect(whileDead.filter((s) => !s.loggedIn)).toEqual([]);
      expect(new Set(whileDead.map((s) => s.version))).toEqual(new Set([rotate.body.rotationId]));

      // A new worker finishes the rotation while readers keep reading from both replicas.
      const rescuer = spawnWorker(env);
      workers.push(rescuer);
      let done = false;
      const seen: Seen[] = [];
      const readers = Array.from({ length: 4 }, async (_, r) => {
        while (!done) seen.push(await readAndLogIn(replicas[r % replicas.length]!, id));
      });
      const rotation = await waitForRotation(replicas[0]!, rotate.body.rotationId, 45_000).finally(() => {
        done = true;
      });
      await Promise.all(readers);
      expect(rotation.status).toBe('succeeded');
      expect(seen.length).toBeGreaterThan(0);
      expect(seen.filter((s) => !s.loggedIn)).toEqual([]);
      expect(seen.filter((s) => s.version === oldVersion)).toEqual([]);

      const after = await burst(id);
      expect(after.filter((s) => !s.loggedIn)).toEqual([]);
      expect(new Set(after.map((s) => s.version))).toEqual(new Set([rotate.body.rotationId]));
      await rescuer.kill();
    },
  );

  it('killed before set (after-create): reads give the old version, which still logs in', async () => {
    const { id } = await importCredential(replicas[0]!, connection, { idPrefix: 'readkill' });
    const warm = await burst(id);
    const doomed = spawnWorker(env, { KEYTURN_FAILPOINTS: 'after-create=kill' });
    workers.push(doomed);
    const rotate = await replicas[0]!.api('POST', `/v1/credentials/${id}/rotate`);
    expect(await doomed.exited).toBe('SIGKILL');
    const whileDead = await burst(id);
    expect(whileDead.filter((s) => !s.loggedIn)).toEqual([]);
    expect(new Set(whileDead.map((s) => s.version))).toEqual(new Set([warm[0]!.version]));
    const rescuer = spawnWorker(env);
    workers.push(rescuer);
    expect((await waitForRotation(replicas[0]!, rotate.body.rotationId, 45_000)).status).toBe('succeeded');
    const after = await burst(id);
    expect(after.filter((s) => !s.loggedIn)).toEqual([]);
    expect(new Set(after.map((s) => s.version))).toEqual(new Set([rotate.body.rotationId]));
    await rescuer.kill();
  });
});
