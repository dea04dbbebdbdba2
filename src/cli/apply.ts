// `keyturn plan` and `keyturn apply`: connections and credentials declared in YAML files kept in Git (SPEC,
// "Declarative files"). The files are checked against the API's own schemas (declarative/documents.ts), secrets come
// from references resolved here (declarative/references.ts), and the plan is the field-level difference with the
// service (declarative/plan.ts). apply carries out exactly the plan, each write over the version it read.
//
// Exit codes: 0 done; 1 an error (a bad file, a reference that cannot be read, the API refused, a write lost to a
// concurrent one); 2 a usage error (a bad option). `plan --detailed-exitcode`: 0 no changes, 2 changes, 1 an error,
// so a pipeline can check drift.
import { createInterface } from 'node:readline';
import { type Command, Option } from 'commander';
import { ApiClientError, type KeyturnClient } from './client.ts';
import type { Plan, Step } from './declarative/plan.ts';
import { colours, EXIT_FAILED, fail, Progress, print, usage, warn } from './output.ts';

export interface ApplyContext {
  client(): KeyturnClient;
  json(): boolean;
}

interface CommonOptions {
  file: string[];
  selector?: string;
  prune?: boolean;
  allowLiteralSecrets?: boolean;
}

/** "team=payments,env=prod" → labels; a usage error otherwise. */
function parseSelector(text: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (!text) return out;
  for (const part of text.split(',')) {
    const m = /^([A-Za-z0-9][A-Za-z0-9._/-]{0,62})=([^,]{1,256})$/.exec(part.trim());
    if (!m) usage(`--selector: "${part}" is not key=value (several: key=value,key=value)`);
    out[m[1]!] = m[2]!;
  }
  return out;
}

/** KEYTURN_APPLY_KEY: the key of the admin password digests (declarative/plan.ts says why it must be keyed). */
function digestKey(): Buffer | undefined {
  const text = process.env.KEYTURN_APPLY_KEY;
  if (!text) return undefined;
  if (text.length < 32)
    usage(
      'KEYTURN_APPLY_KEY must be at least 32 characters (e.g. `openssl rand -base64 32`), kept with the CI secrets',
    );
  return Buffer.from(text, 'utf8');
}

// Loaded when a command needs them: the API's schemas and their compilation are most of what these cost at start-up,
// and every other command would pay for them.
const declarative = async () => {
  const [documents, plan, references] = await Promise.all([
    import('./declarative/documents.ts'),
    import('./declarative/plan.ts'),
    import('./declarative/references.ts'),
  ]);
  return { ...documents, ...plan, ...references };
};

async function planFromFiles(cli: ApplyContext, opts: CommonOptions): Promise<Plan> {
  const { loadDeclarations, makePlan, ReferenceResolver } = await declarative();
  if (opts.prune && !opts.selector)
    usage(
      '--prune needs --selector key=value: it deletes only what this set of files manages, and the selector says which set that is',
    );
  const selector = parseSelector(opts.selector);
  const objects = loadDeclarations(opts.file, { allowLiteralSecrets: Boolean(opts.allowLiteralSecrets) });
  const key = digestKey();
  if (!key && objects.some((o) => o.kind === 'Connection' && o.secrets.length > 0) && !cli.json())
    warn('KEYTURN_APPLY_KEY is not set: a change of an admin password in the files will not be noticed');
  const resolver = new ReferenceResolver();
  try {
    return await makePlan(cli.client(), objects, {
      selector,
      prune: Boolean(opts.prune),
      digestKey: key,
      resolver,
    });
  } finally {
    resolver.close();
  }
}

/** A problem of the files or the plan: every line of it, exit 1 (an error, as --detailed-exitcode wants). */
async function reportPlanProblems(err: unknown): Promise<never> {
  const { FilesError, PlanError } = await declarative();
  if (err instanceof FilesError || err instanceof PlanError) {
    const c = colours(process.stderr);
    const problems = err instanceof FilesError ? err.problems.map((p) => p.message) : err.problems;
    for (const p of problems) process.stderr.write(`${c.red('keyturn:')} ${p}\n`);
    process.exit(EXIT_FAILED);
  }
  throw err;
}

function addCommon(cmd: Command): Command {
  return cmd
    .requiredOption('-f, --file <path...>', 'YAML files, or directories of them (.yaml, .yml)')
    .option(
      '--selector <key=value,...>',
      'labels this set of files stamps on its objects; --prune deletes only objects that carry them',
    )
    .option('--prune', 'delete the objects this selector manages that the files no longer declare')
    .option(
      '--allow-literal-secrets',
      'accept a secret written in a file (refused otherwise: use a reference)',
    );
}

export function addApplyCommands(program: Command, cli: ApplyContext): void {
  addCommon(
    program
      .command('plan')
      .description('what apply would create, change (field by field) or delete; changes nothing'),
  )
    .option('--detailed-exitcode', 'exit 0 when nothing would change, 2 when something would, 1 on error')
    .action(async (opts: CommonOptions & { detailedExitcode?: boolean }) => {
      const plan = await planFromFiles(cli, opts).catch(reportPlanProblems);
      const { changeCount, planJson, renderPlan } = await declarative();
      print(cli.json(), planJson(plan), () => renderPlan(plan, colours()));
      if (opts.detailedExitcode && changeCount(plan) > 0) process.exitCode = 2;
    });

  addCommon(
    program
      .command('apply')
      .description(
        'make the service match the files: create and change (and with --prune delete) as planned',
      ),
  )
    .option('--dry-run', 'print the plan and stop (as `keyturn plan`)')
    .option('-y, --yes', 'do not ask for confirmation on a terminal')
    .option('--confirm', 'ask for confirmation even when standard input is not a terminal (reads "yes")')
    .option('--no-wait', "return once the writes are made, without following new credentials' first rotation")
    .addOption(new Option('--timeout <seconds>', 'how long to follow first rotations').default('300'))
    .action(
      async (
        opts: CommonOptions & {
          dryRun?: boolean;
          yes?: boolean;
          confirm?: boolean;
          wait: boolean;
          timeout: string;
        },
      ) => {
        const timeout = Number(opts.timeout);
        if (!Number.isFinite(timeout) || timeout <= 0) usage('--timeout must be a number of seconds');
        const plan = await planFromFiles(cli, opts).catch(reportPlanProblems);
        const { changeCount, planJson, renderPlan } = await declarative();
        const json = cli.json();
        const changes = changeCount(plan);
        if (opts.dryRun || changes === 0) {
          print(json, { ...planJson(plan), applied: false }, () => renderPlan(plan, colours()));
          return;
        }
        if (!json) process.stdout.write(`${renderPlan(plan, colours())}\n`);
        if (opts.confirm || (process.stdin.isTTY && !opts.yes)) {
          const answer = await ask(`Apply these ${changes} change(s)? Only "yes" is accepted: `);
          if (answer !== 'yes') fail('apply cancelled: nothing was changed');
        }
        const outcome = await execute(cli.client(), plan, { wait: opts.wait, timeoutMs: timeout * 1000 });
        print(json, { ...planJson(plan), applied: true, ...outcome }, () => summary(outcome));
        if (outcome.error || outcome.failedRotations.length > 0) process.exitCode = EXIT_FAILED;
      },
    );
}

/** One line read from standard input, after a prompt on standard error (stdout stays the plan). */
function ask(prompt: string): Promise<string> {
  process.stderr.write(prompt);
  const rl = createInterface({ input: process.stdin });
  return new Promise((resolve) => {
    let answered = false;
    rl.once('line', (line) => {
      answered = true;
      rl.close();
      resolve(line.trim());
    });
    rl.once('close', () => {
      if (!answered) resolve('');
    });
  });
}

interface Outcome {
  done: Array<{ op: Step['op']; kind: Step['kind']; id: string }>;
  notDone: Array<{ op: Step['op']; kind: Step['kind']; id: string }>;
  failedRotations: Array<{ credential: string; rotation: string; message: string }>;
  error?: string;
}

const path = (s: Step) => `/v1/${s.kind === 'Connection' ? 'connections' : 'credentials'}`;

/**
 * The plan's steps in its order, each write over the version the plan read (If-Match). The first refusal stops the
 * apply: what came before it stays done (each step is a whole object), and the summary says what was not done.
 */
async function execute(
  client: KeyturnClient,
  plan: Plan,
  options: { wait: boolean; timeoutMs: number },
): Promise<Outcome> {
  const work = plan.steps.filter((s) => s.op !== 'unchanged');
  const progress = new Progress('apply');
  const outcome: Outcome = { done: [], notDone: [], failedRotations: [] };
  const firstRotations: Array<{ credential: string; rotation: string }> = [];
  for (const [i, s] of work.entries()) {
    progress.update(i, work.length, `${s.op} ${s.kind.toLowerCase()} ${s.id}`);
    const one = `${path(s)}/${encodeURIComponent(s.id)}`;
    const ifMatch: Record<string, string> = s.etag ? { 'if-match': s.etag } : {};
    try {
      const reply =
        s.op === 'create'
          ? await client.exchange<{ rotation?: { id: string } | null }>('POST', path(s), s.body)
          : s.op === 'update'
            ? await client.exchange<{ approvalId?: string }>('PATCH', one, s.body, ifMatch)
            : await client.exchange<{ approvalId?: string }>('DELETE', one, undefined, ifMatch);
      if (reply.status === 202) {
        const approvalId = (reply.body as { approvalId?: string }).approvalId;
        throw new Error(
          `${s.op === 'delete' ? 'DELETE' : 'PATCH'} ${one} needs approval (dual control, approval ${approvalId}): have it approved, then make this change with the approval header (see README, "Dual control")`,
        );
      }
      const rotation = (reply.body as { rotation?: { id: string } | null } | undefined)?.rotation;
      if (s.op === 'create' && s.kind === 'Credential' && rotation)
        firstRotations.push({ credential: s.id, rotation: rotation.id });
      outcome.done.push({ op: s.op, kind: s.kind, id: s.id });
    } catch (err) {
      outcome.error = describeFailure(err, s);
      outcome.notDone = work.slice(i).map(({ op, kind, id }) => ({ op, kind, id }));
      progress.fail(`stopped at ${s.op} ${s.kind.toLowerCase()} ${s.id}`);
      return outcome;
    }
  }
  progress.finish(`${work.length} change(s) made`);
  if (options.wait && firstRotations.length > 0) {
    outcome.failedRotations = await followRotations(client, firstRotations, options.timeoutMs);
  }
  return outcome;
}

function describeFailure(err: unknown, s: Step): string {
  if (err instanceof ApiClientError) {
    const where = err.route ? `${err.route}: ` : '';
    const why =
      err.status === 412
        ? ' (another apply or a person changed it after this plan read it: run apply again to plan from what is there now)'
        : err.status === 409 && s.op === 'create'
          ? ' (it was created after this plan read the service, by another apply or a person: run apply again)'
          : '';
    return `${where}${err.message}${err.status ? ` (HTTP ${err.status}, ${err.code})` : ''}${why}`;
  }
  return (err as Error).message;
}

/** New credentials rotate once at registration: the apply is done when those rotations are. */
async function followRotations(
  client: KeyturnClient,
  rotations: Array<{ credential: string; rotation: string }>,
  timeoutMs: number,
): Promise<Outcome['failedRotations']> {
  const progress = new Progress('first rotations');
  const deadline = Date.now() + timeoutMs;
  const pending = new Map(rotations.map((r) => [r.rotation, r]));
  const failed: Outcome['failedRotations'] = [];
  progress.update(0, rotations.length);
  while (pending.size > 0) {
    for (const r of [...pending.values()]) {
      const view = await client.request<{ status: string; step: string; error?: { message: string } }>(
        'GET',
        `/v1/rotations/${r.rotation}`,
      );
      if (view.status === 'succeeded' || view.status === 'failed') {
        pending.delete(r.rotation);
        if (view.status === 'failed')
          failed.push({ ...r, message: view.error?.message ?? 'failed (see GET /v1/rotations/:id)' });
        progress.update(rotations.length - pending.size, rotations.length, `${r.credential} ${view.status}`);
      }
    }
    if (pending.size === 0) break;
    if (Date.now() > deadline) {
      for (const r of pending.values())
        failed.push({
          ...r,
          message: `still running after the timeout: follow it with keyturn rotation ${r.rotation}`,
        });
      break;
    }
    await new Promise((r) => setTimeout(r, 300));
  }
  if (failed.length > 0) progress.fail(`${failed.length} of ${rotations.length} failed`);
  else progress.finish(`${rotations.length} succeeded`);
  return failed;
}

function summary(o: Outcome): string {
  const count = (op: Step['op']) => o.done.filter((d) => d.op === op).length;
  const lines = [
    `${o.error ? 'Apply stopped' : 'Apply complete'}: ${count('create')} created, ${count('update')} changed, ${count('delete')} deleted.`,
  ];
  if (o.error) {
    lines.push(`Error: ${o.error}`);
    lines.push(`Not done: ${o.notDone.map((n) => `${n.op} ${n.kind.toLowerCase()} ${n.id}`).join(', ')}`);
  }
  for (const f of o.failedRotations) lines.push(`First rotation of ${f.credential} failed: ${f.message}`);
  return lines.join('\n');
}
