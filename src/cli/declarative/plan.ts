// What `keyturn apply` would do: the difference between the files and the service, object by object and field by
// field. Planning reads only (GETs); `apply` then carries out exactly the steps planned, each write made over the
// version the plan read (If-Match), so nothing another writer changed meanwhile is overwritten.
//
// Secrets never appear in a plan. The service cannot give a secret back (write-only), so whether a file's admin
// password differs from the one the service holds is known through a keyed digest that apply keeps in a label of
// the connection: HMAC-SHA-256 under KEYTURN_APPLY_KEY, a key only the appliers (the CI job that also holds the
// secrets) have. Someone with an operator token can read the label but, without the key, cannot test a guess against
// it, and the service offers no route that compares a password: no oracle (compare import-oracle.test.ts). Without
// the key the password is set at creation and not compared afterwards, and the plan says so.
import { createHmac } from 'node:crypto';
import canonicalize from 'canonicalize';
import type { KeyturnClient } from '../client.ts';
import type { DeclaredObject, Kind } from './documents.ts';
import { describeReference, type ReferenceResolver } from './references.ts';

/** The label every object apply writes carries; --prune deletes only objects with it (and the selector's labels). */
export const MANAGED_BY_LABEL = 'managed-by';
export const MANAGED_BY_VALUE = 'keyturn-apply';
/** The keyed digest of the admin password apply last set (see the header). */
export const ADMIN_DIGEST_LABEL = 'keyturn-apply/admin-password';

export type Op = 'create' | 'update' | 'delete' | 'unchanged';

export interface Change {
  field: string;
  /** Absent for a secret: its value is never in a plan. */
  from?: unknown;
  to?: unknown;
  /** A secret field: "(changed)" or "(set)", never its value. */
  secret?: 'changed' | 'set';
}

export interface Step {
  op: Op;
  kind: Kind;
  id: string;
  changes: Change[];
  /** Things a person should know that change nothing (a secret not compared, an object left alone). */
  notes: string[];
  /** file:line of the declaration (none for a prune). */
  source?: string;
  /** The body of the POST or PATCH. It holds resolved secrets: never printed, never in --json. */
  body?: Record<string, unknown>;
  /** The version the plan read: the PATCH or DELETE is made only over it. */
  etag?: string;
}

export interface Plan {
  steps: Step[];
  /** Managed objects the files no longer declare, left alone because --prune was not given. */
  orphans: Array<{ kind: Kind; id: string }>;
}

export class PlanError extends Error {
  readonly problems: string[];
  constructor(problems: string[]) {
    super(problems.join('\n'));
    this.name = 'PlanError';
    this.problems = problems;
  }
}

export interface PlanOptions {
  /** Labels, beyond managed-by, that this apply stamps on its objects and that --prune requires. */
  selector: Record<string, string>;
  prune: boolean;
  /** KEYTURN_APPLY_KEY: the key of the admin password digests; undefined: passwords are not compared. */
  digestKey: Buffer | undefined;
  resolver: ReferenceResolver;
}

type View = Record<string, unknown>;

const same = (a: unknown, b: unknown) => canonicalize(a ?? null) === canonicalize(b ?? null);

/** Leaves of a value by dotted path; arrays and scalars are leaves. */
function leaves(value: unknown, prefix: string, out = new Map<string, unknown>()): Map<string, unknown> {
  if (value && typeof value === 'object' && !Array.isArray(value) && Object.keys(value).length > 0) {
    for (const [k, v] of Object.entries(value)) leaves(v, `${prefix}.${k}`, out);
  } else if (value !== undefined && value !== null) out.set(prefix, value);
  return out;
}

/** The field-level difference of one field, leaf by leaf (schedule.every, labels.team…). */
function fieldChanges(field: string, from: unknown, to: unknown): Change[] {
  const a = leaves(from, field);
  const b = leaves(to, field);
  const changes: Change[] = [];
  for (const path of new Set([...a.keys(), ...b.keys()])) {
    if (!same(a.get(path), b.get(path))) changes.push({ field: path, from: a.get(path), to: b.get(path) });
  }
  return changes.length > 0 ? changes : [{ field, from, to }];
}

/** The digest kept in the connection's label: keyed, and bound to the connection (one password, two digests). */
export function adminDigest(key: Buffer, connectionId: string, password: string): string {
  return createHmac('sha256', key)
    .update(`keyturn-apply/admin-password\0${connectionId}\0`)
    .update(password)
    .digest('base64url');
}

function setPath(target: Record<string, unknown>, path: string[], value: unknown): void {
  let o = target;
  for (const k of path.slice(0, -1)) {
    if (typeof o[k] !== 'object' || o[k] === null) o[k] = {};
    o = o[k] as Record<string, unknown>;
  }
  o[path.at(-1)!] = value;
}

const collection = (kind: Kind) => (kind === 'Connection' ? 'connections' : 'credentials');
const where = (o: DeclaredObject) => `${o.file}:${o.line}`;

export async function makePlan(
  client: KeyturnClient,
  objects: DeclaredObject[],
  options: PlanOptions,
): Promise<Plan> {
  const problems: string[] = [];
  const managed = { ...options.selector, [MANAGED_BY_LABEL]: MANAGED_BY_VALUE };

  // Every reference first: a plan whose secrets cannot be read is an error, before anything is compared.
  const secrets = new Map<DeclaredObject, Map<string, string>>();
  await Promise.all(
    objects.map(async (o) => {
      const values = new Map<string, string>();
      for (const s of o.secrets) {
        try {
          values.set(
            s.path.join('.'),
            'literal' in s.source ? s.source.literal : await options.resolver.resolve(s.source.reference),
          );
        } catch (err) {
          const ref = 'reference' in s.source ? ` (${describeReference(s.source.reference)})` : '';
          problems.push(`${o.file}:${s.line}: ${s.path.join('.')}${ref}: ${(err as Error).message}`);
        }
      }
      secrets.set(o, values);
    }),
  );

  const current = new Map<DeclaredObject, { body: View; etag: string | undefined } | null>();
  await Promise.all(
    objects.map(async (o) => {
      current.set(o, await client.find<View>(`/v1/${collection(o.kind)}/${encodeURIComponent(o.id)}`));
    }),
  );

  const declaredConnections = new Set(objects.filter((o) => o.kind === 'Connection').map((o) => o.id));
  for (const o of objects) {
    for (const [k, v] of Object.entries(managed)) {
      const own = (o.body.labels as Record<string, string> | undefined)?.[k];
      if (own !== undefined && own !== v)
        problems.push(
          `${where(o)}: labels.${k}: apply sets it to "${v}" (its own label); remove it from the file`,
        );
    }
    if (o.kind === 'Credential') {
      const conn = String(o.body.connection);
      if (
        !declaredConnections.has(conn) &&
        !(await client.find(`/v1/connections/${encodeURIComponent(conn)}`))
      ) {
        problems.push(
          `${where(o)}: connection: "${conn}" is neither declared in the files nor registered: declare it (kind: Connection) or fix the name`,
        );
      }
    }
  }

  const steps: Step[] = [];
  for (const o of objects) {
    const values = secrets.get(o)!;
    const found = current.get(o)!;
    const labels = { ...((o.body.labels as Record<string, string>) ?? {}), ...managed };
    if (!found) {
      steps.push(createStep(o, labels, values, options));
      continue;
    }
    const step =
      o.kind === 'Connection'
        ? connectionUpdate(o, found.body, labels, values, options, problems)
        : credentialUpdate(o, found.body, labels, problems);
    step.etag = found.etag;
    steps.push(step);
  }

  // What the files no longer declare: only objects this apply manages, with the selector's labels.
  const orphans: Plan['orphans'] = [];
  const declared = new Set(objects.map((o) => `${o.kind}/${o.id}`));
  for (const o of await managedObjects(client, managed)) {
    if (declared.has(`${o.kind}/${o.id}`)) continue;
    if (!options.prune) {
      orphans.push(o);
      continue;
    }
    const found = await client.find<View>(`/v1/${collection(o.kind)}/${encodeURIComponent(o.id)}`);
    if (!found) continue;
    steps.push({ op: 'delete', kind: o.kind, id: o.id, changes: [], notes: [], etag: found.etag });
  }

  if (problems.length > 0) throw new PlanError(problems);
  return { steps: ordered(steps), orphans };
}

/**
 * Connections are created and changed before the credentials that use them; credentials are deleted before the
 * connections they use (a connection with credentials cannot be deleted).
 */
function ordered(steps: Step[]): Step[] {
  const rank = (s: Step) =>
    s.op === 'delete' ? (s.kind === 'Credential' ? 2 : 3) : s.kind === 'Connection' ? 0 : 1;
  return steps
    .map((s, i) => ({ s, i }))
    .sort((a, b) => rank(a.s) - rank(b.s) || a.i - b.i)
    .map(({ s }) => s);
}

function createStep(
  o: DeclaredObject,
  labels: Record<string, string>,
  values: Map<string, string>,
  options: PlanOptions,
): Step {
  const body: Record<string, unknown> = structuredClone(o.body);
  const changes: Change[] = [];
  for (const s of o.secrets) setPath(body, s.path, values.get(s.path.join('.')));
  const password = values.get('admin.password');
  if (o.kind === 'Connection' && password !== undefined && options.digestKey)
    labels[ADMIN_DIGEST_LABEL] = adminDigest(options.digestKey, o.id, password);
  body.labels = labels;
  const shown: Record<string, unknown> = structuredClone(o.body);
  shown.labels = labels;
  for (const s of o.secrets) setPath(shown, s.path, undefined);
  for (const [path, value] of leaves(shown, '').entries()) {
    const field = path.slice(1);
    if (field === `labels.${ADMIN_DIGEST_LABEL}`) continue;
    changes.push({ field, to: value });
  }
  for (const s of o.secrets) changes.push({ field: s.path.join('.'), secret: 'set' });
  return { op: 'create', kind: o.kind, id: o.id, changes, notes: [], source: where(o), body };
}

/** A difference in a field the API cannot change in place: the object must be removed and declared again. */
function immutable(o: DeclaredObject, field: string, from: unknown, to: unknown, problems: string[]): void {
  if (to !== undefined && !same(from, to)) {
    problems.push(
      `${where(o)}: ${field}: is ${JSON.stringify(from)} in the service, ${JSON.stringify(to)} in the file, and cannot be changed in place: use a new id (and --prune the old one), or keep the registered value`,
    );
  }
}

function labelChanges(
  from: Record<string, string>,
  to: Record<string, string>,
  patch: Record<string, unknown>,
  changes: Change[],
): void {
  if (same(from, to)) return;
  patch.labels = to;
  for (const k of new Set([...Object.keys(from), ...Object.keys(to)])) {
    if (k === ADMIN_DIGEST_LABEL) continue; // shown as admin.password
    if (from[k] !== to[k]) changes.push({ field: `labels.${k}`, from: from[k], to: to[k] });
  }
}

function connectionUpdate(
  o: DeclaredObject,
  view: View,
  labels: Record<string, string>,
  values: Map<string, string>,
  options: PlanOptions,
  problems: string[],
): Step {
  const want = o.body;
  const patch: Record<string, unknown> = {};
  const changes: Change[] = [];
  const notes: string[] = [];
  const viewAdmin = view.admin as { username: string; store: unknown };
  const wantAdmin = want.admin as { username: string; store?: unknown };
  immutable(o, 'type', view.type, want.type, problems);
  immutable(o, 'admin.store', viewAdmin.store, wantAdmin.store, problems);

  const compare = (field: string, from: unknown, to: unknown, send: unknown = to) => {
    if (same(from, to)) return;
    patch[field] = send;
    changes.push(...fieldChanges(field, from, to));
  };
  // Fields the file may leave out, where the service keeps its own value (a default port): compared when given.
  for (const f of ['host', 'port', 'region', 'endpoint', 'database']) {
    if (want[f] !== undefined) compare(f, view[f], want[f]);
  }
  // TLS: the service shows whether a CA is set, not the CA; compared are the mode and whether there is one.
  const wantTls = (want.tls as { mode: string; ca?: string } | undefined) ?? { mode: 'disable' };
  const viewTls = view.tls as { mode: string; ca?: string | null };
  if (wantTls.mode !== viewTls.mode || Boolean(wantTls.ca) !== Boolean(viewTls.ca)) {
    patch.tls = wantTls;
    if (wantTls.mode !== viewTls.mode)
      changes.push({ field: 'tls.mode', from: viewTls.mode, to: wantTls.mode });
    if (Boolean(wantTls.ca) !== Boolean(viewTls.ca))
      changes.push({
        field: 'tls.ca',
        from: viewTls.ca ? '(set)' : '(none)',
        to: wantTls.ca ? '(set)' : '(none)',
      });
  }
  // Fields the file declares in full: left out means none.
  compare('options', view.options ?? {}, want.options ?? {});
  compare('adminRotation', view.adminRotation, want.adminRotation ?? null);
  compare('approval', view.approval, want.approval ?? null);
  if (want.paused !== undefined) compare('paused', view.paused, want.paused);
  if (wantAdmin.username !== viewAdmin.username) {
    setPath(patch, ['admin', 'username'], wantAdmin.username);
    changes.push({ field: 'admin.username', from: viewAdmin.username, to: wantAdmin.username });
  }

  const viewLabels = (view.labels as Record<string, string>) ?? {};
  const password = values.get('admin.password');
  const kept = viewLabels[ADMIN_DIGEST_LABEL];
  if (password !== undefined) {
    if (want.adminRotation ?? view.adminRotation) {
      notes.push(
        'admin.password: not compared: the service rotates it (adminRotation); the file sets it at creation only',
      );
      if (kept !== undefined) labels[ADMIN_DIGEST_LABEL] = kept;
    } else if (!options.digestKey) {
      notes.push('admin.password: not compared: set KEYTURN_APPLY_KEY to track it (see README, "GitOps")');
      if (kept !== undefined) labels[ADMIN_DIGEST_LABEL] = kept;
    } else {
      const digest = adminDigest(options.digestKey, o.id, password);
      labels[ADMIN_DIGEST_LABEL] = digest;
      if (kept !== digest) {
        setPath(patch, ['admin', 'password'], password);
        changes.push({ field: 'admin.password', secret: 'changed' });
      }
    }
  }
  labelChanges(viewLabels, labels, patch, changes);
  // verify is not state: it says how this write is checked, so it goes with a write and makes none.
  if (Object.keys(patch).length > 0 && want.verify !== undefined) patch.verify = want.verify;
  return {
    op: changes.length > 0 ? 'update' : 'unchanged',
    kind: 'Connection',
    id: o.id,
    changes,
    notes,
    source: where(o),
    ...(changes.length > 0 ? { body: patch } : {}),
  };
}

function credentialUpdate(
  o: DeclaredObject,
  view: View,
  labels: Record<string, string>,
  problems: string[],
): Step {
  const want = o.body;
  const patch: Record<string, unknown> = {};
  const changes: Change[] = [];
  const notes: string[] = [];
  for (const f of ['connection', 'username', 'strategy', 'store'])
    immutable(o, f, view[f], want[f], problems);
  const compare = (field: string, from: unknown, to: unknown, send: unknown = to) => {
    if (same(from, to)) return;
    patch[field] = send;
    changes.push(...fieldChanges(field, from, to));
  };
  compare('schedule', view.schedule, want.schedule);
  // The password policy is merged by PATCH: the keys the file gives are compared, the others keep their defaults.
  const wantPolicy = (want.password as Record<string, unknown> | undefined) ?? {};
  const viewPolicy = (view.password as Record<string, unknown> | undefined) ?? {};
  const policyDiff = Object.keys(wantPolicy).filter((k) => !same(viewPolicy[k], wantPolicy[k]));
  if (policyDiff.length > 0) {
    patch.password = wantPolicy;
    for (const k of policyDiff)
      changes.push({ field: `password.${k}`, from: viewPolicy[k], to: wantPolicy[k] });
  }
  compare('maxAgeDays', view.maxAgeDays, want.maxAgeDays ?? null);
  compare('gracePeriod', view.gracePeriod, want.gracePeriod ?? null);
  compare('notifyBefore', view.notifyBefore, want.notifyBefore ?? null);
  compare('approval', view.approval, want.approval ?? null);
  const wantSync = (want.sync as unknown[] | undefined) ?? [];
  compare('sync', view.sync ?? [], wantSync, wantSync.length > 0 ? wantSync : null);
  if (want.paused !== undefined) compare('paused', view.paused, want.paused);
  labelChanges((view.labels as Record<string, string>) ?? {}, labels, patch, changes);
  if (o.secrets.length > 0 || want.import !== undefined)
    notes.push('import and currentPassword apply at creation only: the service owns the password since');
  return {
    op: changes.length > 0 ? 'update' : 'unchanged',
    kind: 'Credential',
    id: o.id,
    changes,
    notes,
    source: where(o),
    ...(changes.length > 0 ? { body: patch } : {}),
  };
}

/** Objects with the managed-by label and every label of the selector. */
async function managedObjects(
  client: KeyturnClient,
  managed: Record<string, string>,
): Promise<Array<{ kind: Kind; id: string }>> {
  const matches = (labels: Record<string, string> | undefined) =>
    Object.entries(managed).every(([k, v]) => labels?.[k] === v);
  const out: Array<{ kind: Kind; id: string }> = [];
  const { connections } = await client.request<{ connections: View[] }>('GET', '/v1/connections');
  for (const c of connections) {
    if (matches(c.labels as Record<string, string>)) out.push({ kind: 'Connection', id: String(c.id) });
  }
  const label = encodeURIComponent(`${MANAGED_BY_LABEL}:${MANAGED_BY_VALUE}`);
  for (let cursor: string | null = ''; cursor !== null; ) {
    const page: { credentials: View[]; next: string | null } = await client.request(
      'GET',
      `/v1/credentials?limit=1000&label=${label}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
    );
    for (const c of page.credentials) {
      if (matches(c.labels as Record<string, string>)) out.push({ kind: 'Credential', id: String(c.id) });
    }
    cursor = page.next;
  }
  return out;
}

/** The number of steps that change something: what --detailed-exitcode reports. */
export function changeCount(plan: Plan): number {
  return plan.steps.filter((s) => s.op !== 'unchanged').length;
}

const show = (v: unknown) => (v === undefined ? '(none)' : JSON.stringify(v));

/** The plan for people. Secrets show as "(changed)" or "(set)", never their values. */
export function renderPlan(
  plan: Plan,
  colour: {
    green(s: string): string;
    yellow(s: string): string;
    red(s: string): string;
    dim(s: string): string;
  },
): string {
  const lines: string[] = [];
  const mark = {
    create: colour.green('+'),
    update: colour.yellow('~'),
    delete: colour.red('-'),
    unchanged: ' ',
  };
  for (const s of plan.steps) {
    const what = `${s.kind.toLowerCase()} ${s.id}`;
    if (s.op === 'unchanged') {
      lines.push(colour.dim(`  ${what} (no changes)`));
    } else {
      lines.push(
        `${mark[s.op]} ${what}${s.op === 'delete' ? ' (pruned: no longer in the files)' : s.op === 'create' ? ' (create)' : ''}`,
      );
      for (const c of s.changes) {
        if (c.secret) lines.push(`    ${c.field}: (${c.secret})`);
        else if (s.op === 'create') lines.push(`    ${c.field}: ${show(c.to)}`);
        else lines.push(`    ${c.field}: ${show(c.from)} → ${show(c.to)}`);
      }
    }
    for (const n of s.notes) lines.push(colour.dim(`    # ${n}`));
  }
  for (const o of plan.orphans) {
    lines.push(
      colour.dim(`  ${o.kind.toLowerCase()} ${o.id} is no longer in the files: kept (--prune deletes it)`),
    );
  }
  const count = (op: Op) => plan.steps.filter((s) => s.op === op).length;
  lines.push(
    changeCount(plan) === 0
      ? `No changes: ${count('unchanged')} object(s) match the files.`
      : `Plan: ${count('create')} to create, ${count('update')} to change, ${count('delete')} to delete, ${count('unchanged')} unchanged.`,
  );
  return lines.join('\n');
}

/** The plan for scripts: the same, without bodies or versions. */
export function planJson(plan: Plan) {
  return {
    changes: changeCount(plan),
    steps: plan.steps.map((s) => ({
      op: s.op,
      kind: s.kind,
      id: s.id,
      ...(s.source ? { source: s.source } : {}),
      changes: s.changes.map((c) => (c.secret ? { field: c.field, secret: c.secret } : c)),
      notes: s.notes,
    })),
    orphans: plan.orphans,
  };
}
