// `keyturn agent` end to end (issue 13, part 1): the agent as a child process against a Keyturn API, the real
// password-checking PostgreSQL, and a service process that logs in with the file the agent renders: 50
// alternating-users rotations with an API outage half-way (about 15 s here). Then --once, bad configurations, an
// unknown credential and a refused token: one line on stderr and a non-zero exit.
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../../src/agent/api.ts';
import { followEvents } from '../../src/client/events.ts';
import { agentDir, ENV_TEMPLATE, freePort, makeTestPki, readEnvFile, spawnAgent } from '../support/agent.ts';
import { agentRotations } from '../support/agent-scenario.ts';
import {
  canLogin,
  dropPrefix,
  importCredential,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  type TestEnv,
  testEnv,
  tokensFile,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';
import { assertNoSecretsInAgentOutput } from '../support/leaks.ts';
import { openSse } from '../support/sse.ts';

let tokens: Awaited<ReturnType<typeof tokensFile>>;
let env: TestEnv;
let servedEnv: TestEnv;
let control: Keyturn;
let served: Keyturn;
let dir: Awaited<ReturnType<typeof agentDir>>;
let connection: string;
const secrets = new Set<string>();

beforeAll(async () => {
  tokens = await tokensFile({
    agent: 'roles: [reader], credentials: ["agent-*"]',
    other: 'roles: [reader], credentials: ["someone-else-*"]',
  });
  env = testEnv({ KEYTURN_TOKENS_FILE: tokens.path });
  // The API the agent follows: on a fixed port, so that it can be stopped and started again at the same address.
  servedEnv = { ...env, env: { ...env.env, PORT: String(await freePort()) } };
  // Workers and the test's own API on another runtime, which keeps rotating while the agent's API is down.
  control = await startKeyturn(env, { components: ['api', 'worker'] });
  served = await startKeyturn(servedEnv);
  connection = await registerPgConnection(control);
  dir = await agentDir(tokens.tokens.agent as string);
});

afterAll(async () => {
  await served?.close();
  await control?.close();
  await dir?.remove();
  await tokens?.remove();
  if (env) await dropPrefix(env.prefix);
});

async function alternating() {
  const imported = await importCredential(control, connection, {
    strategy: 'alternating-users',
    idPrefix: 'agent',
  });
  secrets.add(imported.password);
  return imported;
}

describe('keyturn agent', () => {
  it('renders for an init container and a sidecar; each rotation reaches the service, through an API outage', async () => {
    const { id } = await alternating();
    const result = await agentRotations({
      control,
      served: { kt: served, env: servedEnv },
      credential: id,
      token: tokens.tokens.agent as string,
      dir,
      rotations: 50,
      outageAt: 25,
      outageMs: 4000,
      secrets,
    });
    served = result.served;
    const sorted = [...result.delays].sort((a, b) => a - b);
    console.info(
      `agent: ${result.rotations} rotations; ${result.serviceLogins} service logins (${result.serviceFailures} failed), ${result.testLogins} test logins (${result.testFailures} failed), ${result.reloads} reloads; file updated after a rotation in median ${sorted[Math.floor(sorted.length / 2)]} ms, max ${sorted.at(-1)} ms; ${result.outageDelay} ms for the rotation during the 4 s outage`,
    );
    expect(result.serviceFailures).toBe(0);
    expect(result.testFailures).toBe(0);
    // One login at start and one per rotation; one reload per rotation (the sidecar found the file up to date).
    expect(result.serviceLogins).toBe(result.rotations + 1);
    expect(result.reloads).toBe(result.rotations);
  }, 300_000);

  it('follows /v1/events and resumes with Last-Event-ID: a rotation while the API is down arrives once, after it', async () => {
    const { id } = await alternating();
    const api = await connect({
      url: served.url,
      auth: { kind: 'token', file: dir.tokenFile },
      healthHost: '127.0.0.1',
      templates: [],
    });
    const seen: string[] = [];
    const connected: boolean[] = [];
    const lost: string[] = [];
    const follower = followEvents(
      api,
      [id],
      {
        onRotation: (credential, outcome) => seen.push(`${credential} ${outcome}`),
        onConnected: (resumed) => connected.push(resumed),
        onContact: () => {},
        onDisconnected: (reason) => lost.push(reason),
      },
      { minMs: 100, maxMs: 1000 },
    );
    const rotate = async () => {
      const res = await control.api('POST', `/v1/credentials/${id}/rotate`);
      expect((await waitForRotation(control, res.body.rotationId)).status).toBe('succeeded');
    };
    try {
      await waitFor('the stream to connect', async () => connected.length === 1);
      await rotate();
      await waitFor('the first rotation event', async () => seen.length === 1);
      await served.close();
      await waitFor('the follower to notice', async () => lost.length >= 1);
      await rotate();
      served = await startKeyturn(servedEnv);
      await waitFor('the missed rotation event', async () => seen.length === 2);
      // Give a duplicate the time to show up: the resumed stream must start after the last event seen.
      await rotate();
      await waitFor('the next rotation event', async () => seen.length >= 3);
      expect(seen).toEqual([`${id} succeeded`, `${id} succeeded`, `${id} succeeded`]);
      expect(connected[0]).toBe(false);
      expect(connected.at(-1)).toBe(true);
    } finally {
      follower.close();
      api.close();
    }
  });

  it('--once renders every template with its mode and helpers, and exits 0', async () => {
    const { id } = await alternating();
    const env = join(dir.dir, 'once.env');
    const url = join(dir.dir, 'once.url');
    const config = await dir.config({
      url: served.url,
      tokenFile: dir.tokenFile,
      templates: [
        { credential: id, destination: env, template: ENV_TEMPLATE, mode: '0640' },
        {
          credential: id,
          destination: url,
          template:
            'postgres://{{#urlencode}}{{username}}{{/urlencode}}:{{urlencoded.password}}@{{host}}:{{port}}/{{database}}',
        },
      ],
    });
    const once = spawnAgent(config, ['--once']);
    expect(await once.exited, once.stderr.join('\n')).toBe(0);
    expect((await stat(env)).mode & 0o777).toBe(0o640);
    expect((await stat(url)).mode & 0o777).toBe(0o600);
    const file = await readEnvFile(env);
    const secret = await control.api('GET', `/v1/credentials/${id}/secret`);
    expect(file?.PGPASSWORD).toBe(secret.body.password);
    expect(await canLogin(file?.PGUSER ?? '', file?.PGPASSWORD ?? '')).toBe(true);
    const parsed = new URL(await readFile(url, 'utf8'));
    expect(decodeURIComponent(parsed.password)).toBe(secret.body.password);
    expect(decodeURIComponent(parsed.username)).toBe(secret.body.username);

    // A second run finds the files up to date: nothing is written (same inode, same mtime).
    const before = await stat(env);
    const again = spawnAgent(config, ['--once']);
    expect(await again.exited).toBe(0);
    const after = await stat(env);
    expect([after.ino, after.mtimeMs]).toEqual([before.ino, before.mtimeMs]);
    expect(again.stdout.some((l) => l.includes('agent: file written'))).toBe(false);
    assertNoSecretsInAgentOutput(
      [...secrets, secret.body.password, tokens.tokens.agent as string],
      [['agent', [...once.stdout, ...once.stderr, ...again.stdout, ...again.stderr]]],
    );
  });

  it('reaches an https Keyturn that requires a client certificate, with caFile, certFile and keyFile', async (t) => {
    const pki = makeTestPki(dir.dir);
    if (typeof pki === 'string') {
      console.info(`agent.test.ts: skipping the mTLS test: ${pki}`);
      t.skip();
      return;
    }
    const { id } = await alternating();
    // A third API process on the same prefix, serving https and requiring a certificate from the test CA.
    const tls = await startKeyturn({
      ...env,
      env: {
        ...env.env,
        KEYTURN_TLS_CERT_FILE: pki.serverCert,
        KEYTURN_TLS_KEY_FILE: pki.serverKey,
        KEYTURN_TLS_CLIENT_CA_FILE: pki.caCert,
        KEYTURN_TLS_REQUIRE_CLIENT_CERT: 'true',
      },
    });
    try {
      expect(tls.url).toMatch(/^https:/);
      const destination = join(dir.dir, 'tls.env');
      const config = await dir.config({
        url: tls.url,
        tokenFile: dir.tokenFile,
        caFile: pki.caCert,
        certFile: pki.clientCert,
        keyFile: pki.clientKey,
        templates: [{ credential: id, destination, template: ENV_TEMPLATE }],
      });
      const once = spawnAgent(config, ['--once']);
      expect(await once.exited, once.stderr.join('\n')).toBe(0);
      const file = await readEnvFile(destination);
      expect(await canLogin(file?.PGUSER ?? '', file?.PGPASSWORD ?? '')).toBe(true);
    } finally {
      await tls.close();
    }
  });

  it('jwtFile: a Kubernetes service-account token, sent as the bearer and mapped to a reader by Keyturn', async () => {
    const { id } = await alternating();
    // A local issuer standing in for the cluster's: its JWKS, and a token with a service account's claims.
    const { publicKey, privateKey } = await generateKeyPair('ES256', { extractable: true });
    const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
    const idp = createServer((req, res) => {
      if (req.url === '/jwks')
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [jwk] }));
      else res.writeHead(404).end();
    });
    await new Promise<void>((resolve) => idp.listen(0, '127.0.0.1', resolve));
    const issuer = `http://127.0.0.1:${(idp.address() as AddressInfo).port}`;
    const sub = 'system:serviceaccount:payments:payments-api';
    const tokensYaml = join(dir.dir, 'jwt-tokens.yaml');
    await writeFile(
      tokensYaml,
      [
        'jwt:',
        `  - issuer: ${issuer}`,
        '    audience: keyturn',
        `    jwksUrl: ${issuer}/jwks`,
        '    algorithms: [ES256]',
        '    rules:',
        `      - {match: {sub: "${sub}"}, roles: [reader], credentials: ["${id}"]}`,
        '',
      ].join('\n'),
    );
    const jwt = await new SignJWT({ 'kubernetes.io': { namespace: 'payments' } })
      .setProtectedHeader({ alg: 'ES256', kid: 'k1', typ: 'JWT' })
      .setIssuer(issuer)
      .setAudience('keyturn')
      .setSubject(sub)
      .setIssuedAt()
      .setExpirationTime('10m')
      .sign(privateKey);
    const jwtFile = join(dir.dir, 'sa-token');
    await writeFile(jwtFile, jwt);
    const kt = await startKeyturn({ ...env, env: { ...env.env, KEYTURN_TOKENS_FILE: tokensYaml } });
    try {
      const destination = join(dir.dir, 'jwt.env');
      const config = await dir.config({
        url: kt.url,
        jwtFile,
        templates: [{ credential: id, destination, template: ENV_TEMPLATE }],
      });
      const once = spawnAgent(config, ['--once']);
      expect(await once.exited, once.stderr.join('\n')).toBe(0);
      const file = await readEnvFile(destination);
      expect(await canLogin(file?.PGUSER ?? '', file?.PGPASSWORD ?? '')).toBe(true);
      assertNoSecretsInAgentOutput(
        [jwt, file?.PGPASSWORD ?? ''],
        [['agent', [...once.stdout, ...once.stderr]]],
      );

      // A token the issuer did not sign: refused at start, naming jwtFile.
      await writeFile(jwtFile, `${jwt.slice(0, -4)}AAAA`);
      const refused = spawnAgent(config, ['--once']);
      expect(await refused.exited).toBe(1);
      expect(refused.stderr).toEqual([
        'keyturn agent: Keyturn refused the token in jwtFile (401): is it the right one, and not expired?',
      ]);
    } finally {
      await kt.close();
      idp.closeAllConnections();
      await new Promise((resolve) => idp.close(resolve));
    }
  });

  it('--once exits non-zero when Keyturn cannot be reached, and leaves no file', async () => {
    const destination = join(dir.dir, 'unreachable.env');
    const config = await dir.config({
      url: `http://127.0.0.1:${await freePort()}`,
      tokenFile: dir.tokenFile,
      templates: [{ credential: 'agent-x', destination, template: '{{password}}' }],
    });
    const once = spawnAgent(config, ['--once']);
    expect(await once.exited).toBe(1);
    expect(once.stderr).toEqual(['keyturn agent: 1 template(s) could not be rendered (see the log above)']);
    await expect(stat(destination)).rejects.toThrow(/ENOENT/);
  });

  it('a bad configuration: one line naming each problem, exit 2, never the token', async () => {
    const token = tokens.tokens.agent as string;
    const cases: Array<[object | string, RegExp[]]> = [
      [
        { url: served.url, templates: [] },
        [/tokenFile or jwtFile is required/, /templates must be a non-empty list/],
      ],
      [
        { url: served.url, tokenFile: dir.tokenFile, jwtFile: dir.tokenFile, templates: [{}] },
        [
          /templates\[0\]\.credential is required/,
          /templates\[0\]\.destination is required/,
          /tokenFile and jwtFile are both set/,
        ],
      ],
      [
        {
          url: 'ftp://keyturn',
          tokenFile: dir.tokenFile,
          templates: [{ credential: 'a', destination: '/tmp/x', template: '{{pasword}}', mode: 600 }],
        },
        [/templates\[0\]\.mode must be an octal file mode in quotes/, /url must be the Keyturn API address/],
      ],
      [
        {
          url: served.url,
          tokenFile: dir.tokenFile,
          templates: [{ credential: 'a', destination: '/tmp/x', template: 'P={{pasword}}' }],
        },
        [/templates\[0\]\.template uses an unknown name "pasword": the fields are username, password/],
      ],
      [
        {
          url: served.url,
          tokenFile: dir.tokenFile,
          templates: [{ credential: 'a', destination: '/tmp/x', template: '{{password}}', token }],
        },
        [/templates\[0\] has an unknown field "token": the file names a token file/],
      ],
      [
        {
          url: served.url,
          tokenFile: dir.tokenFile,
          templates: [{ credential: 'a', destination: '/tmp/x', template: '{{> evil}}' }],
        },
        [/templates\[0\]\.template uses a partial/],
      ],
      [
        {
          url: served.url,
          tokenFile: dir.tokenFile,
          templates: [
            { credential: 'a', destination: '/tmp/x', template: '{{password}}', signal: 'SIGHUP' },
            {
              credential: 'a',
              destination: '/tmp/x',
              template: '{{password}}',
              command: ['true'],
              pidFile: 'p',
            },
          ],
        },
        [
          /templates\[0\]\.signal and templates\[0\]\.pidFile go together/,
          /templates\[1\] has both command and signal\/pidFile/,
          /templates\[1\]\.destination is also the destination of templates\[0\]/,
        ],
      ],
      [`url: [${token}\n`, [/is not valid YAML \(line \d+, column \d+\)/]],
    ];
    for (const [data, expected] of cases) {
      let path: string;
      if (typeof data === 'string') {
        path = join(dir.dir, `bad-${randomBytes(3).toString('hex')}.yaml`);
        await writeFile(path, data);
      } else path = await dir.config(data);
      const run = spawnAgent(path);
      expect(await run.exited).toBe(2);
      expect(run.stderr, JSON.stringify(data)).toHaveLength(1);
      for (const e of expected) expect(run.stderr[0]).toMatch(e);
      expect(run.stderr[0]?.startsWith(`keyturn agent: ${path}: `)).toBe(true);
      expect(run.stderr[0]).not.toContain(token);
      expect(run.stdout).toEqual([]);
    }
  });

  it('an unknown credential, a credential the token may not read, a refused token: one line, exit 1', async () => {
    const { id } = await alternating();
    const otherDir = await agentDir(tokens.tokens.other as string);
    const badDir = await agentDir(randomBytes(32).toString('base64url'));
    try {
      const cases: Array<[string, string, RegExp]> = [
        [dir.tokenFile, 'agent-does-not-exist', /Keyturn has no credential "agent-does-not-exist" \(404\)/],
        [otherDir.tokenFile, id, new RegExp(`may not read credential "${id}" \\(403\\)`)],
        [badDir.tokenFile, id, /Keyturn refused the token in tokenFile \(401\)/],
        [join(dir.dir, 'no-such-token'), id, /tokenFile .*no-such-token cannot be read \(ENOENT\)/],
      ];
      for (const [tokenFile, credential, expected] of cases) {
        const destination = join(dir.dir, `never-${randomBytes(3).toString('hex')}.env`);
        const config = await dir.config({
          url: served.url,
          tokenFile,
          templates: [
            { credential: id, destination: `${destination}.first`, template: '{{version}}' },
            { credential, destination, template: '{{password}}' },
          ],
        });
        for (const args of [[], ['--once']]) {
          const run = spawnAgent(config, args);
          expect(await run.exited, run.stderr.join('\n')).toBe(1);
          expect(run.stderr).toHaveLength(1);
          expect(run.stderr[0]).toMatch(expected);
          await expect(stat(destination)).rejects.toThrow(/ENOENT/);
          assertNoSecretsInAgentOutput(
            [...secrets, tokens.tokens.agent as string, tokens.tokens.other as string],
            [['agent', [...run.stdout, ...run.stderr]]],
          );
        }
      }
    } finally {
      await otherDir.remove();
      await badDir.remove();
    }
  });

  it('a file that cannot be written yet is tried again until it can be, then reloaded', async () => {
    const { id } = await alternating();
    const later = join(dir.dir, `later-${randomBytes(3).toString('hex')}`);
    const marker = join(dir.dir, `reloaded-${randomBytes(3).toString('hex')}`);
    const config = await dir.config({
      url: served.url,
      tokenFile: dir.tokenFile,
      templates: [
        {
          credential: id,
          destination: join(later, 'db.env'),
          template: '{{version}}',
          command: ['touch', marker],
        },
      ],
    });
    const agent = spawnAgent(config);
    try {
      await waitFor('the failed write to be logged', async () =>
        agent.stdout.some((l) => l.includes('agent: rendering failed') && l.includes('ENOENT')),
      );
      await mkdir(later);
      await waitFor('the file to be written', async () => (await stat(join(later, 'db.env'))).isFile());
      await waitFor('the reload command to run', async () => (await stat(marker)).isFile());
      const secret = await control.api('GET', `/v1/credentials/${id}/secret`);
      expect(await readFile(join(later, 'db.env'), 'utf8')).toBe(secret.body.version);
    } finally {
      expect(await agent.kill('SIGTERM')).toBe(0);
    }
  });

  it("polls at the secret's max-age when it cannot follow events: a rotation still reaches the file", async () => {
    const { id } = await alternating();
    // An API that serves one event stream, taken by someone else, and caches secrets for 2 s at most.
    const kt = await startKeyturn({
      ...env,
      env: { ...env.env, KEYTURN_EVENTS_MAX_CLIENTS: '1', KEYTURN_SECRET_MAX_AGE: '2s' },
    });
    const taken = await openSse(`${kt.url}/v1/events`, {
      headers: { authorization: `Bearer ${env.adminToken}` },
    });
    const destination = join(dir.dir, `poll-${randomBytes(3).toString('hex')}.env`);
    const agent = spawnAgent(
      await dir.config({
        url: kt.url,
        tokenFile: dir.tokenFile,
        templates: [{ credential: id, destination, template: ENV_TEMPLATE }],
      }),
    );
    try {
      expect(taken.status).toBe(200);
      await waitFor('the agent to render', async () => (await readEnvFile(destination))?.KEYTURN_VERSION);
      await waitFor('the event stream to be refused', async () =>
        agent.stdout.some((l) => l.includes('event stream lost') && l.includes('answered 503')),
      );
      const res = await control.api('POST', `/v1/credentials/${id}/rotate`);
      const rotation = await waitForRotation(control, res.body.rotationId);
      expect(rotation.status).toBe('succeeded');
      const secret = await control.api('GET', `/v1/credentials/${id}/secret`);
      await waitFor(
        'the poll to bring the new version',
        async () => (await readEnvFile(destination))?.KEYTURN_VERSION === secret.body.version,
      );
      expect(agent.stdout.some((l) => l.includes('following rotation events'))).toBe(false);
    } finally {
      expect(await agent.kill('SIGTERM')).toBe(0);
      await taken.close();
      await kt.close();
    }
  });

  it('answers a liveness probe on healthPort and exits 0 on SIGTERM', async () => {
    const { id } = await alternating();
    const healthPort = await freePort();
    const config = await dir.config({
      url: served.url,
      tokenFile: dir.tokenFile,
      healthPort,
      templates: [{ credential: id, destination: join(dir.dir, 'health.env'), template: '{{password}}' }],
    });
    const agent = spawnAgent(config);
    try {
      const health = await waitFor('the health endpoint', async () => {
        const res = await fetch(`http://127.0.0.1:${healthPort}/healthz`);
        return res.status === 200 ? ((await res.json()) as { ok: boolean; templates: object[] }) : undefined;
      });
      expect(health.ok).toBe(true);
      expect(health.templates).toHaveLength(1);
      expect(JSON.stringify(health)).not.toMatch(/password/i);
    } finally {
      expect(await agent.kill('SIGTERM')).toBe(0);
    }
  });
});
