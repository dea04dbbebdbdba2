// The `keyturn` command line: everyday work against the API (KEYTURN_URL, KEYTURN_TOKEN). Operations a person
// waits on show their progress: `keyturn rotate` prints each step as the workers complete it.
import { readFileSync } from 'node:fs';
import { Command, Option } from 'commander';
import { addAgentCommand } from './agent.ts';
import { addApplyCommands } from './apply.ts';
import { addAuditCommands } from './audit.ts';
import { ApiClientError, KeyturnClient } from './client.ts';
import { addCompletionCommand } from './completion.ts';
import { EXIT_USAGE, fail, print, setUsageExitCode } from './output.ts';
import { addRekeyCommand } from './rekey.ts';
import {
  addComplianceCommand,
  addConnectionCommands,
  addCredentialCommands,
  addEventCommands,
  addLeaseCommands,
} from './resources.ts';
import { addTokenCommands } from './token.ts';

interface Globals {
  url: string;
  token?: string;
  json?: boolean;
}

interface RotationView {
  id: string;
  credentialId: string;
  status: string;
  step: string;
  attempts: number;
  maxAttempts: number;
  steps: Array<{ step: string; outcome: string; attempt: number; at: string; note?: string }>;
  error?: { step: string; message: string };
  rollback?: { outcome: string; note: string };
}

function client(globals: Globals): KeyturnClient {
  let token = globals.token ?? process.env.KEYTURN_TOKEN;
  if (!token) {
    // On a development machine `npm start` keeps its admin token here.
    try {
      token = readFileSync('.keyturn/admin-token', 'utf8').trim();
    } catch {
      fail(
        'No token: set KEYTURN_TOKEN or pass --token (a development server keeps one in .keyturn/admin-token)',
      );
    }
  }
  return new KeyturnClient(globals.url, token);
}

const program = new Command()
  .name('keyturn')
  .description('Keyturn: secrets rotation for payment and banking platforms')
  .addOption(
    new Option('--url <url>', 'Keyturn API address').env('KEYTURN_URL').default('http://127.0.0.1:8080'),
  )
  .addOption(new Option('--token <token>', 'bearer token (prefer the KEYTURN_TOKEN variable)'))
  .option('--json', 'print JSON instead of text')
  .showHelpAfterError()
  // A usage error (an unknown option, a missing argument) exits 2, apart from an API or a service that said no (1).
  // Commands made after this inherit it.
  .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : usageExitCode()));

// `plan --detailed-exitcode` keeps 2 for "changes": an error of any kind is 1 there, as pipelines expect.
const usageExitCode = () => (process.argv.includes('--detailed-exitcode') ? 1 : EXIT_USAGE);
setUsageExitCode(usageExitCode());

const globals = (): Globals => program.opts<Globals>();

program
  .command('status')
  .description('readiness of the service and the state of every credential')
  .action(async () => {
    const g = globals();
    const ready = await fetch(`${g.url.replace(/\/+$/, '')}/readyz`)
      .then((r) => r.json())
      .catch(() => ({ status: 'unreachable' }));
    // Every page: the list is paged (SPEC, cursor paging), 1000 at a time.
    const credentials: Array<Record<string, unknown>> = [];
    for (let cursor: string | null = ''; cursor !== null; ) {
      const page: { credentials: Array<Record<string, unknown>>; next: string | null } = await client(
        g,
      ).request('GET', `/v1/credentials?limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
      credentials.push(...page.credentials);
      cursor = page.next;
    }
    const count = (pred: (c: Record<string, unknown>) => boolean) => credentials.filter(pred).length;
    const summary = {
      service: ready,
      credentials: credentials.length,
      active: count((c) => c.status === 'active'),
      rotating: count((c) => c.status === 'rotating'),
      failed: count((c) => c.status === 'failed'),
      overdue: count((c) => c.overdue === true),
    };
    // The Redis topology and the node(s) that take writes now, as /readyz names them (after a failover, the new master).
    const redis = (
      ready as {
        checks?: { redis?: { ok?: boolean; topology?: string; writeNodes?: string[]; error?: string } };
      }
    ).checks?.redis;
    print(Boolean(g.json), summary, () =>
      [
        `service     ${(ready as { status: string }).status}`,
        ...(redis
          ? [
              `redis       ${redis.topology ?? 'unknown topology'}${redis.ok ? '' : ` (not answering: ${redis.error ?? 'unknown error'})`}`,
              `writes to   ${redis.writeNodes?.length ? redis.writeNodes.join(', ') : 'no node known'}`,
            ]
          : []),
        `credentials ${summary.credentials} (active ${summary.active}, rotating ${summary.rotating}, failed ${summary.failed}, overdue ${summary.overdue})`,
      ].join('\n'),
    );
  });

program
  .command('rotate <credential>')
  .description('rotate a credential now and follow its steps')
  .option('--no-wait', 'return once the rotation is queued')
  .option('--timeout <seconds>', 'how long to follow it', '300')
  .action(async (id: string, opts: { wait: boolean; timeout: string }) => {
    const g = globals();
    const api = client(g);
    const started = await api.request<{ rotationId: string; status: string; created: boolean }>(
      'POST',
      `/v1/credentials/${encodeURIComponent(id)}/rotate`,
    );
    if (!g.json) {
      process.stderr.write(
        started.created
          ? `rotation ${started.rotationId} queued\n`
          : `a rotation is already in flight: following ${started.rotationId}\n`,
      );
    }
    if (!opts.wait) return print(Boolean(g.json), started, () => started.rotationId);
    const deadline = Date.now() + Number(opts.timeout) * 1000;
    let shown = 0;
    let rotation: RotationView;
    for (;;) {
      rotation = await api.request<RotationView>('GET', `/v1/rotations/${started.rotationId}`);
      if (!g.json) {
        for (const s of rotation.steps.slice(shown)) {
          process.stderr.write(
            `  ${s.step.padEnd(8)} ${s.outcome.padEnd(9)} attempt ${s.attempt}${s.note ? `  ${s.note}` : ''}\n`,
          );
        }
      }
      shown = rotation.steps.length;
      if (rotation.status === 'succeeded' || rotation.status === 'failed') break;
      if (Date.now() > deadline)
        fail(
          `still ${rotation.status} at step ${rotation.step}; follow it with: keyturn rotation ${rotation.id}`,
        );
      await new Promise((r) => setTimeout(r, 500));
    }
    print(Boolean(g.json), rotation, () =>
      rotation.status === 'succeeded'
        ? `rotated ${id}: new version ${rotation.id} after ${rotation.attempts} attempt(s)`
        : `rotation of ${id} failed at ${rotation.error?.step}: ${rotation.error?.message}\n${rotation.rollback?.note ?? ''}`,
    );
    if (rotation.status !== 'succeeded') process.exitCode = 1;
  });

program
  .command('rotation <id>')
  .description('one rotation with its steps')
  .action(async (rid: string) => {
    const g = globals();
    const r = await client(g).request<RotationView>('GET', `/v1/rotations/${encodeURIComponent(rid)}`);
    print(Boolean(g.json), r, () => JSON.stringify(r, null, 2));
  });

// The API's objects: connections, credentials, leases, the compliance report, the event stream.
const resources = { client: () => client(globals()), json: () => Boolean(globals().json) };
addConnectionCommands(program, resources);
addCredentialCommands(program, resources);
addLeaseCommands(program, resources);
addComplianceCommand(program, resources);
addEventCommands(program, resources);

// Connections and credentials declared in YAML files: `keyturn plan` and `keyturn apply` (SPEC, "Declarative files").
addApplyCommands(program, resources);

// The audit trail; `audit verify --file … --public-key …` works offline.
addAuditCommands(program, {
  client: () => client(globals()),
  json: () => Boolean(globals().json),
  fail,
});

// The key-encryption key: rewrap every sealed value under the primary provider, with progress (src/rekey).
addRekeyCommand(program, {
  client: () => client(globals()),
  json: () => Boolean(globals().json),
  fail,
});

// Files rendered from credentials, and the reload of the service that reads them (src/agent).
addAgentCommand(program);

// Offline: make a token and its entry for the tokens file, or hash one made elsewhere.
addTokenCommands(program);

// Shell completion, made from the commands above: registered last so that it knows them all.
addCompletionCommand(program);

try {
  await program.parseAsync();
} catch (err) {
  // The route, the HTTP status and the API's own message (SPEC's error shape), e.g.
  // "PATCH /v1/credentials/x: … (HTTP 412, precondition_failed)".
  if (err instanceof ApiClientError)
    fail(
      `${err.route ? `${err.route}: ` : ''}${err.message}${err.status ? ` (HTTP ${err.status}, ${err.code})` : ''}`,
    );
  // Anything else is a bug or an environment problem: one line, the stack only when asked for (finding 12, issue 11).
  if (process.env.KEYTURN_DEBUG) process.stderr.write(`${(err as Error)?.stack ?? String(err)}\n`);
  fail(
    `${(err as Error)?.message ?? String(err)}${process.env.KEYTURN_DEBUG ? '' : ' (set KEYTURN_DEBUG=1 for details)'}`,
  );
}
