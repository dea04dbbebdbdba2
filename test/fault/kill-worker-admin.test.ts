// Admin rotation under SIGKILL (issue 16 §3): a worker killed at each point of an admin rotation, on PostgreSQL,
// MariaDB, Redis ACL and LDAP. At the moment of death Keyturn can still log in as the admin (with the store's current
// password, or with the rotation's pending one where the set step may have landed: the write-ahead); a new worker
// finishes the rotation; afterwards the new admin password works, the old one does not, and a credential behind the
// connection still rotates.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  adminPasswordOf,
  dropPrefix,
  type Keyturn,
  spawnWorker,
  startKeyturn,
  testEnv,
  type WorkerProcess,
  waitForRotation,
} from '../support/harness.ts';
import { CONTRACT_FIXTURES, importTargetUser, type StartedTarget } from '../support/targets.ts';

// After each step, and inside set between the downstream change and its record (the write-ahead's own case).
const POINTS = ['after-create', 'set-after-downstream', 'after-set', 'after-test', 'after-finish'];
const TARGETS = ['PostgreSQL', 'MySQL/MariaDB', 'Redis ACL', 'LDAP (OpenLDAP)'];

const plan = await Promise.all(
  CONTRACT_FIXTURES.filter((f) => TARGETS.includes(f.name)).map(async (fixture) => ({
    fixture,
    skip: await fixture.skipReason(),
  })),
);
for (const { fixture, skip } of plan)
  if (skip) console.warn(`skipping admin SIGKILL tests on ${fixture.name}: ${skip}`);

for (const { fixture, skip } of plan) {
  describe.skipIf(Boolean(skip))(`SIGKILL during an admin rotation on ${fixture.name}`, () => {
    const env = testEnv();
    let kt: Keyturn;
    let target: StartedTarget;
    const workers: WorkerProcess[] = [];
    const connection = 'downstream';

    beforeAll(async () => {
      target = await fixture.start();
      kt = await startKeyturn(env, { components: ['api'] });
      const res = await kt.api('POST', '/v1/connections', { id: connection, ...target.connection });
      expect(res.status, res.text).toBe(201);
    });
    afterAll(async () => {
      await Promise.all(workers.map((w) => w.kill('SIGKILL')));
      await kt?.close();
      await target?.stop();
      await dropPrefix(env.prefix);
    });

    it.each(POINTS)('killed at %s', async (point) => {
      const user = await target.createUser();
      const credential = await importTargetUser(kt, connection, user, 'single-user', `kill-${point}`);
      const before = await adminPasswordOf(env, connection);
      const doomed = spawnWorker(env, { KEYTURN_FAILPOINTS: `${point}=kill` });
      workers.push(doomed);
      const rotate = await kt.api('POST', `/v1/connections/${connection}/rotate`);
      expect(rotate.status, rotate.text).toBe(202);
      expect(await doomed.exited).toBe('SIGKILL');
      // Whatever the downstream holds now, Keyturn holds it too: the current version, or the rotation's pending one.
      const current = await adminPasswordOf(env, connection);
      const pending = await adminPasswordOf(env, connection, rotate.body.rotationId).catch(() => undefined);
      const works =
        (await target.adminCanLogin(current)) ||
        (pending !== undefined && (await target.adminCanLogin(pending)));
      expect(works, `at ${point} neither the current nor the pending admin password logs in`).toBe(true);

      // The rescuer runs in this process: quicker to start than a second child, and just as new a worker.
      const rescuer = await startKeyturn(env, { components: ['worker'] });
      const rotation = await waitForRotation(kt, rotate.body.rotationId, 45_000);
      expect(rotation.status, JSON.stringify(rotation.error)).toBe('succeeded');
      const after = await adminPasswordOf(env, connection);
      expect(after).not.toBe(before);
      expect(await target.adminCanLogin(after)).toBe(true);
      expect(await target.adminCanLogin(before)).toBe(false);
      // Every credential behind the connection can still be rotated.
      const again = await kt.api('POST', `/v1/credentials/${credential}/rotate`);
      expect((await waitForRotation(kt, again.body.rotationId, 45_000)).status).toBe('succeeded');
      const secret = (await kt.api('GET', `/v1/credentials/${credential}/secret`)).body;
      expect(await target.canLogin(secret.username, secret.password)).toBe(true);
      await rescuer.close();
    });
  });
}
