// RabbitMQ users rotated end to end (issue 16), on the machine's RabbitMQ through its management API, both
// strategies: after each rotation an AMQP login with the new password works and one with the old password does not
// (single-user), and an alternating pair's clone has its user's tags, vhost permissions and topic permissions.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dropPrefix, type Keyturn, startKeyturn, testEnv, waitForRotation } from '../support/harness.ts';
import { importTargetUser, rabbitAdmin, type StartedTarget, TARGET_FIXTURES } from '../support/targets.ts';

const fixture = TARGET_FIXTURES.find((f) => f.name === 'RabbitMQ')!;
const skip = await fixture.skipReason();
if (skip) console.warn(`skipping the RabbitMQ rotation tests: ${skip}`);

describe.skipIf(Boolean(skip))('RabbitMQ target: rotations end to end', () => {
  const env = testEnv({ LOG_LEVEL: 'warn' });
  let kt: Keyturn;
  let target: StartedTarget;

  beforeAll(async () => {
    target = await fixture.start();
    kt = await startKeyturn(env, { components: ['api', 'worker'] });
    const res = await kt.api('POST', '/v1/connections', { id: 'rabbit', ...target.connection });
    expect(res.status, res.text).toBe(201);
  });
  afterAll(async () => {
    await kt?.close();
    await target?.stop();
    await dropPrefix(env.prefix);
  });

  const rotate = async (id: string) => {
    const asked = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    expect(asked.status, asked.text).toBe(202);
    const done = await waitForRotation(kt, asked.body.rotationId);
    expect(done.status, JSON.stringify(done.error)).toBe('succeeded');
    return (await kt.api('GET', `/v1/credentials/${id}/secret`)).body as {
      username: string;
      password: string;
    };
  };

  it('single-user: the new password logs in over AMQP, the old one no longer does; the user keeps its tags', async () => {
    const user = await target.createUser();
    const id = await importTargetUser(kt, 'rabbit', user, 'single-user', 'rmq');
    const first = await rotate(id);
    expect(first.username).toBe(user.username);
    expect(await target.canLogin(user.username, first.password)).toBe(true);
    expect(await target.canLogin(user.username, user.password)).toBe(false);
    const second = await rotate(id);
    expect(await target.canLogin(user.username, second.password)).toBe(true);
    expect(await target.canLogin(user.username, first.password)).toBe(false);
    const record = (await rabbitAdmin('GET', `/api/users/${user.username}`)) as { tags: string[] | string };
    expect(String(record.tags)).toContain('monitoring');
  });

  it('alternating-users: the clone has the same tags and permissions, and the two take turns', async () => {
    const user = await target.createUser();
    const id = await importTargetUser(kt, 'rabbit', user, 'alternating-users', 'rmq-alt');
    const first = await rotate(id);
    expect(first.username).toBe(`${user.username}_clone`);
    expect(await target.canLogin(first.username, first.password)).toBe(true);
    // The user it took over from still works during its grace: services move over.
    expect(await target.canLogin(user.username, user.password)).toBe(true);
    const access = async (name: string) => ({
      tags: String(((await rabbitAdmin('GET', `/api/users/${name}`)) as { tags: string[] | string }).tags),
      permissions: (
        (await rabbitAdmin('GET', `/api/users/${name}/permissions`)) as Array<Record<string, string>>
      ).map(({ vhost, configure, write, read }) => ({ vhost, configure, write, read })),
    });
    expect(await access(first.username)).toEqual(await access(user.username));
    const second = await rotate(id);
    expect(second.username).toBe(user.username);
    expect(await target.canLogin(second.username, second.password)).toBe(true);
    expect(second.password).not.toBe(user.password);
  });

  it('a connection whose admin is not an administrator: the rotation fails and rolls back, the user still logs in', async () => {
    const plain = {
      name: `kt_fx_plain_${Date.now().toString(36)}`,
      password: `plain-${Date.now()}-0123456789`,
    };
    await rabbitAdmin('PUT', `/api/users/${plain.name}`, { password: plain.password, tags: 'management' });
    try {
      const conn = await kt.api('POST', '/v1/connections', {
        ...target.connection,
        id: 'rabbit-weak',
        admin: { username: plain.name, password: plain.password },
      });
      // verify (the default) refuses it, naming the tag; registered unchecked, its rotation fails safely.
      expect(conn.status, conn.text).toBe(422);
      expect(conn.body.error.message).toContain('lacks the administrator tag');
      const unchecked = await kt.api('POST', '/v1/connections', {
        ...target.connection,
        id: 'rabbit-weak',
        admin: { username: plain.name, password: plain.password },
        verify: false,
      });
      expect(unchecked.status, unchecked.text).toBe(201);
      const user = await target.createUser();
      const id = await importTargetUser(kt, 'rabbit-weak', user, 'single-user', 'rmq-weak');
      const asked = await kt.api('POST', `/v1/credentials/${id}/rotate`);
      const done = await waitForRotation(kt, asked.body.rotationId);
      expect(done.status).toBe('failed');
      expect(done.error.message).toContain('needs the administrator tag');
      expect(done.error.message).not.toContain(plain.password);
      expect(await target.canLogin(user.username, user.password)).toBe(true);
    } finally {
      await rabbitAdmin('DELETE', `/api/users/${plain.name}`);
    }
  });

  it('refuses options the target does not take, naming them', async () => {
    const res = await kt.api('POST', '/v1/connections', {
      ...target.connection,
      id: 'rabbit-bad',
      options: { amqpPort: 70000, exchange: 'x' },
    });
    expect(res.status).toBe(422);
    expect(res.body.error.message).toContain('"exchange" is not an option of rabbitmq connections');
    expect(res.body.error.message).toContain('amqpPort must be a port number');
  });
});
