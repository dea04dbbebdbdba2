// The CLI's commands for the API's objects (issue 18, "The CLI covers the API"): connections, credentials, leases,
// the compliance report and the live event stream. Each is a thin, honest mapping of one route: the API validates
// and answers, the CLI prints a table for people or JSON for scripts (--json), and errors name the route, the HTTP
// status and the API's message (main.ts). Bodies come from files in the declarative format (kind: Connection or
// Credential), so a secret is a reference there too, never a command-line argument (shell history, `ps`).
import type { Command } from 'commander';
import { parse as parseYaml, stringify } from 'yaml';
import type { KeyturnClient } from './client.ts';
import { colours, fail, Progress, print, table, usage } from './output.ts';

export interface ResourceContext {
  client(): KeyturnClient;
  json(): boolean;
}

type Row = Record<string, unknown>;
const enc = encodeURIComponent;
const cell = (v: unknown) => (v === null || v === undefined || v === '' ? '-' : String(v));
const labelsText = (labels: unknown) =>
  Object.entries((labels as Record<string, string>) ?? {})
    .map(([k, v]) => `${k}=${v}`)
    .join(',') || '-';

/** An object for people: YAML reads better than JSON and is what the files are written in. */
const asYaml = (value: unknown) => stringify(value).trimEnd();

/**
 * `--set path=value`, repeatable, into a PATCH body: the value is read as YAML, so `--set schedule.every=7d`,
 * `--set maxAgeDays=90`, `--set 'labels={team: payments}'` and `--set gracePeriod=null` all mean what they say.
 */
function patchFromSets(sets: string[]): Row {
  const body: Row = {};
  for (const set of sets) {
    const m = /^([A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z0-9_/-]+)*)=(.*)$/s.exec(set);
    if (!m) usage(`--set "${set}": write field=value, e.g. --set schedule.every=7d`);
    const path = m[1]!.split('.');
    let value: unknown;
    try {
      // A flow mapping or sequence, a number, a boolean, null, or text.
      value = m[2] === '' ? '' : (parseYaml(m[2]!) as unknown);
    } catch (err) {
      usage(`--set ${m[1]}: ${(err as Error).message}`);
    }
    let o = body;
    for (const k of path.slice(0, -1)) {
      if (typeof o[k] !== 'object' || o[k] === null) o[k] = {};
      o = o[k] as Row;
    }
    o[path.at(-1)!] = value;
  }
  return body;
}

/** One object of `kind` from a file in the declarative format, its secret references resolved. */
async function bodyFromFile(
  file: string,
  kind: 'Connection' | 'Credential',
  allowLiteralSecrets: boolean,
): Promise<Row> {
  // Loaded when needed (the API's schemas are most of the CLI's start-up otherwise).
  const { FilesError, loadDeclarations } = await import('./declarative/documents.ts');
  const { ReferenceResolver } = await import('./declarative/references.ts');
  let objects: ReturnType<typeof loadDeclarations>;
  try {
    objects = loadDeclarations([file], { allowLiteralSecrets });
  } catch (err) {
    if (err instanceof FilesError) fail(err.message);
    throw err;
  }
  const mine = objects.filter((o) => o.kind === kind);
  if (mine.length !== 1 || objects.length !== 1)
    fail(
      `${file}: holds ${objects.length} object(s); create takes one document of kind ${kind} (keyturn apply takes many)`,
    );
  const o = mine[0]!;
  const body = structuredClone(o.body);
  const resolver = new ReferenceResolver();
  try {
    for (const s of o.secrets) {
      const value = 'literal' in s.source ? s.source.literal : await resolver.resolve(s.source.reference);
      let target = body;
      for (const k of s.path.slice(0, -1)) target = target[k] as Row;
      target[s.path.at(-1)!] = value;
    }
  } catch (err) {
    fail(`${file}: ${(err as Error).message}`);
  } finally {
    resolver.close();
  }
  return body;
}

/** A write dual control holds for approval (202): say so and exit 1, since nothing was changed yet. */
function approvalNeeded(reply: { status: number; body: unknown }, what: string): void {
  if (reply.status !== 202) return;
  const id = (reply.body as { approvalId?: string } | undefined)?.approvalId;
  fail(
    `${what} needs approval (dual control): approval ${id}; once approved, repeat it with the header X-Keyturn-Approval: ${id}`,
  );
}

/** Follows a rotation to its end with progress on stderr; exit 1 when it failed. */
async function followRotation(cli: ResourceContext, rotationId: string, label: string, timeoutMs: number) {
  const api = cli.client();
  const progress = new Progress(label);
  const deadline = Date.now() + timeoutMs;
  const order = ['create', 'set', 'test', 'finish'];
  for (;;) {
    const r = await api.request<{
      id: string;
      status: string;
      step: string;
      attempts: number;
      error?: { step: string; message: string };
    }>('GET', `/v1/rotations/${enc(rotationId)}`);
    progress.update(
      Math.max(0, order.indexOf(r.step)) + (r.status === 'succeeded' ? 1 : 0),
      order.length,
      `${r.step} (${r.status})`,
    );
    if (r.status === 'succeeded' || r.status === 'failed') {
      if (r.status === 'succeeded') progress.finish(`succeeded after ${r.attempts} attempt(s)`);
      else progress.fail(`failed at ${r.error?.step}: ${r.error?.message}`);
      print(cli.json(), r, () => `${r.status}: rotation ${r.id}`);
      if (r.status !== 'succeeded') process.exitCode = 1;
      return;
    }
    if (Date.now() > deadline) {
      progress.fail(`still ${r.status} at step ${r.step}`);
      fail(`rotation ${r.id} is still ${r.status}; follow it with: keyturn rotation ${r.id}`);
    }
    await new Promise((res) => setTimeout(res, 500));
  }
}

export function addConnectionCommands(program: Command, cli: ResourceContext): void {
  const connections = program
    .command('connections')
    .description('downstreams whose admin Keyturn uses (databases, caches, services)');
  connections
    .command('list')
    .description('every connection')
    .action(async () => {
      const { connections: list } = await cli
        .client()
        .request<{ connections: Row[] }>('GET', '/v1/connections');
      print(cli.json(), list, () =>
        list.length === 0
          ? 'no connections'
          : table([
              ['ID', 'TYPE', 'HOST', 'PORT', 'ADMIN', 'PAUSED', 'LABELS'],
              ...list.map((c) => [
                cell(c.id),
                cell(c.type),
                cell(c.host),
                cell(c.port),
                cell((c.admin as Row)?.username),
                c.paused ? 'yes' : 'no',
                labelsText(c.labels),
              ]),
            ]),
      );
    });
  connections
    .command('get <id>')
    .description('one connection (never its admin password)')
    .action(async (id: string) => {
      const c = await cli.client().request<Row>('GET', `/v1/connections/${enc(id)}`);
      print(cli.json(), c, () => asYaml(c));
    });
  connections
    .command('create')
    .description('register a connection from a file (kind: Connection; the admin password as a reference)')
    .requiredOption('-f, --file <file>', 'one YAML document in the format of keyturn apply')
    .option('--allow-literal-secrets', 'accept an admin password written in the file')
    .action(async (opts: { file: string; allowLiteralSecrets?: boolean }) => {
      const body = await bodyFromFile(opts.file, 'Connection', Boolean(opts.allowLiteralSecrets));
      const c = await cli.client().request<Row>('POST', '/v1/connections', body);
      print(cli.json(), c, () => `created connection ${c.id}`);
    });
  connections
    .command('patch <id>')
    .description('change fields of a connection: --set host=db2.internal --set port=5433')
    .option(
      '--set <field=value>',
      'a field and its value (YAML), repeatable',
      (v: string, all: string[]) => [...all, v],
      [],
    )
    .option('--admin-password-env <NAME>', 'a new admin password, read from this environment variable')
    .action(async (id: string, opts: { set: string[]; adminPasswordEnv?: string }) => {
      const body = patchFromSets(opts.set);
      if (opts.adminPasswordEnv) {
        const password = process.env[opts.adminPasswordEnv];
        if (!password) usage(`--admin-password-env: ${opts.adminPasswordEnv} is not set`);
        body.admin = { ...((body.admin as Row) ?? {}), password };
      }
      if (Object.keys(body).length === 0)
        usage('nothing to change: give --set field=value or --admin-password-env');
      const reply = await cli.client().exchange<Row>('PATCH', `/v1/connections/${enc(id)}`, body);
      approvalNeeded(reply, `PATCH /v1/connections/${id}`);
      print(cli.json(), reply.body, () => `changed connection ${id}: ${Object.keys(body).join(', ')}`);
    });
  connections
    .command('delete <id>')
    .description('remove a connection (refused while credentials use it)')
    .action(async (id: string) => {
      const reply = await cli.client().exchange('DELETE', `/v1/connections/${enc(id)}`);
      approvalNeeded(reply, `DELETE /v1/connections/${id}`);
      print(cli.json(), { deleted: id }, () => `deleted connection ${id}`);
    });
  connections
    .command('rotate-admin <id>')
    .description("rotate the connection's admin password now, and follow it")
    .option('--no-wait', 'return once the rotation is queued')
    .option('--timeout <seconds>', 'how long to follow it', '300')
    .action(async (id: string, opts: { wait: boolean; timeout: string }) => {
      const started = await cli
        .client()
        .request<{ rotationId: string; status: string }>('POST', `/v1/connections/${enc(id)}/rotate`);
      if (!opts.wait) return print(cli.json(), started, () => started.rotationId);
      await followRotation(cli, started.rotationId, `admin rotation of ${id}`, Number(opts.timeout) * 1000);
    });
}

export function addCredentialCommands(program: Command, cli: ResourceContext): void {
  const credentials = program.command('credentials').description('registered credentials');
  credentials
    .command('list')
    .description('credentials, optionally filtered')
    .option('--status <status>', 'pending, active, rotating or failed')
    .option('--label <key=value>', 'only credentials with this label')
    .option('--overdue', 'only overdue credentials')
    .action(async (opts: { status?: string; label?: string; overdue?: boolean }) => {
      const q = new URLSearchParams();
      if (opts.status) q.set('status', opts.status);
      if (opts.label) q.set('label', opts.label);
      if (opts.overdue) q.set('overdue', 'true');
      // Every page (cursor paging), 1000 at a time.
      const list: Row[] = [];
      for (let cursor: string | null = ''; cursor !== null; ) {
        q.set('limit', '1000');
        if (cursor) q.set('cursor', cursor);
        const page: { credentials: Row[]; next: string | null } = await cli
          .client()
          .request('GET', `/v1/credentials?${q}`);
        list.push(...page.credentials);
        cursor = page.next;
      }
      print(cli.json(), list, () =>
        list.length === 0
          ? 'no credentials'
          : table([
              ['ID', 'STRATEGY', 'STATUS', 'ROTATED', 'NEXT', 'OVERDUE', 'PAUSED'],
              ...list.map((c) => [
                cell(c.id),
                cell(c.strategy),
                c.status === 'failed' ? colours().red(String(c.status)) : cell(c.status),
                cell(c.rotatedAt),
                cell(c.nextRotationAt),
                c.overdue ? colours().yellow('yes') : 'no',
                c.paused ? 'yes' : 'no',
              ]),
            ]),
      );
    });
  credentials
    .command('get <id>')
    .description('one credential (never its secret)')
    .action(async (id: string) => {
      const c = await cli.client().request<Row>('GET', `/v1/credentials/${enc(id)}`);
      print(cli.json(), c, () => asYaml(c));
    });
  credentials
    .command('create')
    .description(
      'register a credential from a file (kind: Credential); it rotates once at once unless import: true',
    )
    .requiredOption('-f, --file <file>', 'one YAML document in the format of keyturn apply')
    .option('--allow-literal-secrets', 'accept a currentPassword written in the file')
    .option('--no-wait', 'return without following the first rotation')
    .option('--timeout <seconds>', 'how long to follow the first rotation', '300')
    .action(async (opts: { file: string; allowLiteralSecrets?: boolean; wait: boolean; timeout: string }) => {
      const body = await bodyFromFile(opts.file, 'Credential', Boolean(opts.allowLiteralSecrets));
      const c = await cli
        .client()
        .request<Row & { rotation: { id: string } | null }>('POST', '/v1/credentials', body);
      if (!c.rotation || !opts.wait) return print(cli.json(), c, () => `created credential ${c.id}`);
      if (!cli.json()) process.stderr.write(`created credential ${c.id}; following its first rotation\n`);
      await followRotation(cli, c.rotation.id, `first rotation of ${c.id}`, Number(opts.timeout) * 1000);
    });
  credentials
    .command('patch <id>')
    .description('change a schedule or policy: --set schedule.every=7d --set maxAgeDays=30')
    .option(
      '--set <field=value>',
      'a field and its value (YAML), repeatable',
      (v: string, all: string[]) => [...all, v],
      [],
    )
    .action(async (id: string, opts: { set: string[] }) => {
      const body = patchFromSets(opts.set);
      if (Object.keys(body).length === 0) usage('nothing to change: give --set field=value');
      const reply = await cli.client().exchange<Row>('PATCH', `/v1/credentials/${enc(id)}`, body);
      approvalNeeded(reply, `PATCH /v1/credentials/${id}`);
      print(cli.json(), reply.body, () => `changed credential ${id}: ${Object.keys(body).join(', ')}`);
    });
  for (const [name, paused, what] of [
    ['pause', true, 'stop its scheduled rotations (a manual rotate still runs)'],
    ['resume', false, 'resume its scheduled rotations'],
  ] as const) {
    credentials
      .command(`${name} <id>`)
      .description(what)
      .action(async (id: string) => {
        const reply = await cli.client().exchange<Row>('PATCH', `/v1/credentials/${enc(id)}`, { paused });
        approvalNeeded(reply, `PATCH /v1/credentials/${id}`);
        print(cli.json(), reply.body, () => `${paused ? 'paused' : 'resumed'} credential ${id}`);
      });
  }
  credentials
    .command('delete <id>')
    .description('remove a credential (its leases are revoked first; a secret in Vault or AWS stays there)')
    .action(async (id: string) => {
      const reply = await cli.client().exchange('DELETE', `/v1/credentials/${enc(id)}`);
      approvalNeeded(reply, `DELETE /v1/credentials/${id}`);
      print(cli.json(), { deleted: id }, () => `deleted credential ${id}`);
    });
}

export function addLeaseCommands(program: Command, cli: ResourceContext): void {
  const leases = program
    .command('leases')
    .description('short-lived credentials of their own, revoked at expiry');
  const leaseRow = (l: Row) => [
    cell(l.id),
    cell(l.credential),
    cell(l.username),
    cell(l.status),
    cell(l.expiresAt),
  ];
  leases
    .command('issue <credential>')
    .description('a new short-lived user and password (printed once: they are the point)')
    .option('--ttl <duration>', 'e.g. 15m or 1h (default: the service default)')
    .action(async (credential: string, opts: { ttl?: string }) => {
      const reply = await cli
        .client()
        .exchange<Row>(
          'POST',
          `/v1/credentials/${enc(credential)}/leases`,
          opts.ttl ? { ttl: ttlValue(opts.ttl) } : {},
        );
      approvalNeeded(reply, `POST /v1/credentials/${credential}/leases`);
      const l = reply.body;
      print(cli.json(), l, () =>
        asYaml({ id: l.id, username: l.username, password: l.password, expiresAt: l.expiresAt }),
      );
    });
  leases
    .command('renew <lease>')
    .description('extend a lease (up to its maximum)')
    .option('--ttl <duration>', 'the new time to live from now')
    .action(async (lease: string, opts: { ttl?: string }) => {
      const l = await cli
        .client()
        .request<Row>('POST', `/v1/leases/${enc(lease)}/renew`, opts.ttl ? { ttl: ttlValue(opts.ttl) } : {});
      print(cli.json(), l, () => `renewed lease ${l.id}: expires ${l.expiresAt}`);
    });
  leases
    .command('revoke <lease>')
    .description('remove the lease user now')
    .action(async (lease: string) => {
      await cli.client().request('DELETE', `/v1/leases/${enc(lease)}`);
      print(cli.json(), { revoked: lease }, () => `revoked lease ${lease}`);
    });
  leases
    .command('get <lease>')
    .description('one lease (never its password)')
    .action(async (lease: string) => {
      const l = await cli.client().request<Row>('GET', `/v1/leases/${enc(lease)}`);
      print(cli.json(), l, () => asYaml(l));
    });
  leases
    .command('list <credential>')
    .description("a credential's leases")
    .action(async (credential: string) => {
      const { leases: list } = await cli
        .client()
        .request<{ leases: Row[] }>('GET', `/v1/credentials/${enc(credential)}/leases`);
      print(cli.json(), list, () =>
        list.length === 0
          ? 'no leases'
          : table([['ID', 'CREDENTIAL', 'USERNAME', 'STATUS', 'EXPIRES'], ...list.map(leaseRow)]),
      );
    });
}

/** A TTL as the API takes it: a duration text, or a whole number of seconds. */
function ttlValue(text: string): string | number {
  return /^\d+$/.test(text) ? Number(text) : text;
}

export function addComplianceCommand(program: Command, cli: ResourceContext): void {
  program
    .command('compliance')
    .description('the age of every credential against its policy (auditors); a table, CSV or JSON')
    .option('--format <format>', 'table, csv or json (--json is json too)', 'table')
    .option('--label <key=value>', 'only credentials with this label')
    .option('--overdue', 'only overdue credentials')
    .action(async (opts: { format: string; label?: string; overdue?: boolean }) => {
      const format = cli.json() ? 'json' : opts.format;
      if (!['table', 'csv', 'json'].includes(format))
        usage(`--format ${opts.format}: use table, csv or json`);
      const q = new URLSearchParams();
      if (opts.label) q.set('label', opts.label);
      if (opts.overdue) q.set('overdue', 'true');
      if (format === 'csv') {
        q.set('format', 'csv');
        const res = await cli
          .client()
          .stream(`/v1/compliance?${q}`, { type: /^text\/csv\b/i, what: 'a CSV report' });
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>)
          process.stdout.write(chunk);
        return;
      }
      const report = await cli.client().request<{
        asOf: string;
        credentials: Row[];
        totals: Row;
        admins: Row[];
      }>('GET', `/v1/compliance${q.size ? `?${q}` : ''}`);
      if (format === 'json') return print(true, report, () => '');
      const c = colours();
      const t = report.totals;
      process.stdout.write(
        `${[
          report.credentials.length === 0
            ? 'no credentials'
            : table([
                [
                  'ID',
                  'CONNECTION',
                  'STRATEGY',
                  'STATUS',
                  'AGE (DAYS)',
                  'MAX AGE',
                  'OVERDUE',
                  'LAST OUTCOME',
                ],
                ...report.credentials.map((r) => [
                  cell(r.id),
                  cell(r.connection),
                  cell(r.strategy),
                  cell(r.status),
                  cell(r.ageDays),
                  cell(r.maxAgeDays),
                  r.overdue ? c.red('yes') : 'no',
                  cell(r.lastOutcome),
                ]),
              ]),
          '',
          `as of ${report.asOf}: ${t.credentials} credential(s), ${t.withinPolicy} within policy (${t.withinPolicyPercent ?? '-'}%)`,
        ].join('\n')}\n`,
      );
    });
}

export function addEventCommands(program: Command, cli: ResourceContext): void {
  program
    .command('events')
    .description('the live event stream')
    .command('follow')
    .description('print rotation events as they happen, until interrupted (Ctrl-C)')
    .option('--credential <id or glob>', 'one credential, or those a glob such as "payments-*" matches')
    .option('--steps', 'also each rotation step as it lands')
    .action(async (opts: { credential?: string; steps?: boolean }) => {
      const q = new URLSearchParams();
      if (opts.credential) q.set('credential', opts.credential);
      if (opts.steps) q.set('steps', 'true');
      const res = await cli.client().stream(`/v1/events${q.size ? `?${q}` : ''}`, {
        type: /^text\/event-stream\b/i,
        what: 'an event stream',
      });
      process.on('SIGINT', () => process.exit(0));
      process.on('SIGTERM', () => process.exit(0));
      // On stderr, --json or not: a script may wait for it to know the stream is open.
      process.stderr.write('following events (Ctrl-C to stop)\n');
      const decoder = new TextDecoder();
      let buffer = '';
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buffer += decoder.decode(chunk, { stream: true });
        for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          printEvent(block, cli.json());
        }
      }
      fail('the event stream ended (the service closed it): run the command again to resume');
    });
}

/** One server-sent event: a line for people, a JSON line for scripts; comments (heartbeats) are skipped. */
function printEvent(block: string, json: boolean): void {
  let event = 'message';
  let id: string | undefined;
  const data: string[] = [];
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) continue;
    const [field, ...rest] = line.split(':');
    const value = rest.join(':').replace(/^ /, '');
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
    else if (field === 'id') id = value;
  }
  if (data.length === 0) return;
  let payload: Row;
  try {
    payload = JSON.parse(data.join('\n')) as Row;
  } catch {
    payload = { data: data.join('\n') };
  }
  if (json) {
    process.stdout.write(`${JSON.stringify({ event, id, ...payload })}\n`);
    return;
  }
  const c = colours();
  const outcome = String(payload.outcome ?? payload.status ?? payload.step ?? '');
  const coloured = /fail/.test(outcome)
    ? c.red(outcome)
    : /succeed|success/.test(outcome)
      ? c.green(outcome)
      : outcome;
  process.stdout.write(
    `${cell(payload.at ?? payload.time ?? new Date().toISOString())}  ${event.padEnd(8)}  ${cell(payload.credential).padEnd(24)}  ${coloured}${payload.version ? `  version ${payload.version}` : ''}\n`,
  );
}
