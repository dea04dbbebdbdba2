// Issue 13's acceptance scenario for `keyturn agent` (test/slow/agent.test.ts runs it with 50 rotations):
//   1. `keyturn agent --once` renders the env file, as an init container would, and exits 0;
//   2. a service process (agent-service.ts) starts, reads the file and logs in to the real PostgreSQL;
//   3. the agent starts as a sidecar; the service's pid is in its pidFile, SIGHUP is its reload;
//   4. each alternating-users rotation is followed by the agent rewriting the file and sending SIGHUP; the service
//      logs in again with the new content, and the test logs in with the file's content too;
//   5. at `outageAt` the API the agent talks to is closed, a rotation runs meanwhile (workers elsewhere), and the API
//      comes back on the same address a few seconds later: the agent catches up, no rotation is lost;
//   6. SIGTERM ends the agent with 0; no password and no token appear in what the agent or the service printed.
import { randomBytes } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { expect } from 'vitest';
import { type agentDir, ENV_TEMPLATE, loginsOf, readEnvFile, spawnAgent, spawnService } from './agent.ts';
import { canLogin, type Keyturn, startKeyturn, type TestEnv, waitFor, waitForRotation } from './harness.ts';
import { assertNoSecretsInAgentOutput } from './leaks.ts';

export interface ScenarioResult {
  rotations: number;
  serviceLogins: number;
  serviceFailures: number;
  testLogins: number;
  testFailures: number;
  reloads: number;
  /** ms from a rotation's end to the file holding its version, per rotation. */
  delays: number[];
  /** ms from the rotation during the outage to the file holding its version. */
  outageDelay: number;
}

export async function agentRotations(options: {
  control: Keyturn;
  /** The API the agent follows; closed and started again on the same port for the outage. */
  served: { kt: Keyturn; env: TestEnv };
  credential: string;
  token: string;
  dir: Awaited<ReturnType<typeof agentDir>>;
  rotations: number;
  outageAt: number;
  outageMs: number;
  /** Every password seen: none may be printed by the agent. */
  secrets: Set<string>;
}): Promise<ScenarioResult & { served: Keyturn }> {
  const { control, credential, dir, secrets } = options;
  let served = options.served.kt;
  const destination = join(dir.dir, `db-${randomBytes(3).toString('hex')}.env`);
  const pidFile = join(dir.dir, 'service.pid');
  const healthFile = join(dir.dir, 'healthy');
  const config = await dir.config({
    url: served.url,
    tokenFile: dir.tokenFile,
    healthFile,
    templates: [{ credential, destination, template: ENV_TEMPLATE, mode: '0600', signal: 'SIGHUP', pidFile }],
  });
  const secretNow = async () => {
    const res = await control.api('GET', `/v1/credentials/${credential}/secret`);
    expect(res.status, res.text).toBe(200);
    secrets.add(res.body.password);
    return res.body as { username: string; password: string; version: string };
  };

  // 1. the init container
  const init = spawnAgent(config, ['--once']);
  expect(await init.exited, init.stderr.join('\n')).toBe(0);
  const first = await readEnvFile(destination);
  expect(first?.KEYTURN_VERSION).toBe((await secretNow()).version);
  expect((await stat(destination)).mode & 0o777).toBe(0o600);

  // 2. the service
  const service = spawnService(destination, pidFile);
  await waitFor('the service to log in at start', async () => loginsOf(service).length >= 1, 20_000);
  expect(loginsOf(service)[0]?.ok).toBe(true);

  // 3. the sidecar
  const agent = spawnAgent(config);
  const result: ScenarioResult = {
    rotations: 0,
    serviceLogins: 0,
    serviceFailures: 0,
    testLogins: 0,
    testFailures: 0,
    reloads: 0,
    delays: [],
    outageDelay: 0,
  };
  try {
    await waitFor(
      'the agent to follow rotation events',
      async () => agent.stdout.some((l) => l.includes('following rotation events')),
      20_000,
    );
    for (let i = 1; i <= options.rotations; i += 1) {
      const outage = i === options.outageAt;
      if (outage) await served.close();
      const rotate = await control.api('POST', `/v1/credentials/${credential}/rotate`);
      expect(rotate.status, rotate.text).toBe(202);
      const rotation = await waitForRotation(control, rotate.body.rotationId);
      expect(rotation.status).toBe('succeeded');
      const ended = performance.now();
      const now = await secretNow();
      result.rotations += 1;
      if (outage) {
        // The file still holds the previous user, which keeps working under alternating users.
        const stale = await readEnvFile(destination);
        expect(stale?.KEYTURN_VERSION).not.toBe(now.version);
        result.testLogins += 1;
        if (!(await canLogin(stale?.PGUSER ?? '', stale?.PGPASSWORD ?? ''))) result.testFailures += 1;
        await new Promise((r) => setTimeout(r, options.outageMs));
        served = await startKeyturn(options.served.env);
        expect(served.url).toBe(options.served.kt.url);
      }
      await waitFor(
        `the file to hold version ${now.version} (rotation ${i})`,
        async () => (await readEnvFile(destination))?.KEYTURN_VERSION === now.version,
        90_000,
        50,
      );
      const delay = Math.round(performance.now() - ended);
      if (outage) result.outageDelay = delay;
      else result.delays.push(delay);
      const login = await waitFor(
        `the service to log in again after rotation ${i}`,
        async () => loginsOf(service).find((l) => l.reason === 'SIGHUP' && l.version === now.version),
        30_000,
        50,
      );
      if (!login.ok) result.serviceFailures += 1;
      const file = await readEnvFile(destination);
      result.testLogins += 1;
      if (!(await canLogin(file?.PGUSER ?? '', file?.PGPASSWORD ?? ''))) result.testFailures += 1;
      expect(file?.PGUSER).toBe(now.username);
    }
    const logins = loginsOf(service);
    result.serviceLogins = logins.length;
    result.serviceFailures = logins.filter((l) => !l.ok).length;
    result.reloads = agent.stdout.filter((l) => l.includes('agent: reload done')).length;
    expect((await stat(healthFile)).isFile()).toBe(true);
  } finally {
    // 6. SIGTERM: exit 0
    expect(await agent.kill('SIGTERM'), agent.stderr.join('\n')).toBe(0);
    await service.kill('SIGTERM');
  }
  assertNoSecretsInAgentOutput(
    [...secrets, options.token],
    [
      ['init agent', [...init.stdout, ...init.stderr]],
      ['agent', [...agent.stdout, ...agent.stderr]],
      ['service', [...service.stdout, ...service.stderr]],
    ],
  );
  // Structured logs: every line the agent printed on stdout is one JSON object.
  for (const line of [...init.stdout, ...agent.stdout]) expect(() => JSON.parse(line)).not.toThrow();
  return { ...result, served };
}
