// Dual control (SPEC, "Dual control"; issue 17 §5): a credential or connection with an `approval` policy has its most
// sensitive operations gated. A gated request without an approval creates a pending one (202); principals matching
// the policy's approvers, never the requester, approve or deny it; the requester repeats the very same request (same
// route, target and body digest) with `X-Keyturn-Approval: <id>`, and it runs once. `X-Keyturn-Break-Glass: <reason>`
// skips all this, as an audited, notified event. Every step is an audit event naming who asked, who decided and why.
//
// The API decides which requests are gated and calls this; the records are registry/approvals.ts.
import { createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import canonicalize from 'canonicalize';
import type { AuditEventInput, AuditLog } from '../audit/audit-log.ts';
import type { Principal } from '../auth/principal.ts';
import type { Clock } from '../clock.ts';
import type {
  Approval,
  ApprovalCursor,
  ApprovalOperation,
  ApprovalRepo,
  ApprovalStatus,
} from '../registry/approvals.ts';
import { ConflictError, ForbiddenError, NotFoundError, UnprocessableError } from '../registry/errors.ts';
import type { ApprovalPolicy } from '../registry/types.ts';

/** Who acts, as dual control needs to know: the audit name, the roles, and how it authenticated. */
export type Actor = Pick<Principal, 'name' | 'roles' | 'via'>;

/** What the API says of a gated request; the service adds the body digest and the field names. */
export interface GatedRequest {
  route: string;
  action: string;
  target: ApprovalOperation['target'];
  body: unknown;
}

/** The 202 of a gated request: what to poll, and until when it can be decided and used. */
export interface PendingApproval {
  approvalId: string;
  status: 'pending';
  expiresAt: string;
}

/**
 * The fields of a connection PATCH that dual control gates: its admin (username, password) and where it points (every
 * rotation sends the admin's and the credentials' passwords there).
 */
export const CONNECTION_GATED_FIELDS = [
  'admin',
  'host',
  'port',
  'region',
  'endpoint',
  'database',
  'tls',
  'options',
] as const;

/** Rounds of check-and-set before a request racing many others on one approval is told to retry. */
const SWAP_ATTEMPTS = 20;
/** Field names shown for one body at most (a body has a size limit; this keeps a record small whatever it holds). */
const MAX_FIELDS = 64;

/**
 * Whether a secret read (or a lease) is a person's, and so gated (issue 17 §5: "a manual secret read by a human
 * principal"). The principal model has no kind of its own: what it has is roles. Services and workloads read with
 * the `reader` role (static reader tokens, reader JWTs of service accounts, reader certificates); only admins may
 * read a secret otherwise. So a read is a person's when the principal does not hold `reader`, or holds `admin`: a
 * principal with both is treated as a person, or adding `reader` to an administrator's entry would switch dual
 * control off. A reader token used by a person cannot be told from a service's: bind such tokens narrowly.
 */
export function isPersonalRead(principal: Actor): boolean {
  return !principal.roles.includes('reader') || principal.roles.includes('admin');
}

/**
 * Whether `next` makes `current` weaker: removed (null), fewer approvals needed, or someone more may approve (an
 * approver added). Fewer approvers or more approvals needed is stronger, and free.
 */
export function weakens(
  current: ApprovalPolicy | undefined,
  next: ApprovalPolicy | null | undefined,
): boolean {
  if (!current || next === undefined) return false;
  if (next === null) return true;
  if (next.required < current.required) return true;
  return next.approvers.some((a) => !current.approvers.includes(a));
}

/** The policy as one text, approvers sorted: equal policies compare equal whatever the order they were given in. */
export function policyText(policy: ApprovalPolicy | undefined | null): string {
  return policy
    ? JSON.stringify({ required: policy.required, approvers: [...policy.approvers].sort() })
    : 'none';
}

/** Refuses (422) a policy that can never be met: more approvals than the named approvers can give. */
export function checkPolicy(policy: ApprovalPolicy | null | undefined, field = 'approval'): void {
  if (!policy) return;
  if (policy.approvers.every((a) => a.startsWith('name:')) && policy.required > policy.approvers.length) {
    throw new UnprocessableError(
      `${field}.required is ${policy.required}, but only ${policy.approvers.length} named approver(s) can approve (and never the requester): name more approvers, add a role, or lower required`,
    );
  }
}

/** Whether the principal matches one of the approvers ("role:<role>" or "name:<principal name>"). */
export function matchesApprovers(policy: ApprovalPolicy, who: Actor): boolean {
  return policy.approvers.some((a) =>
    a.startsWith('role:')
      ? who.roles.includes(a.slice(5) as Principal['roles'][number])
      : a.startsWith('name:') && a.slice(5) === who.name,
  );
}

const sameRequester = (a: Approval, who: Actor): boolean =>
  a.requester.name === who.name && a.requester.via === who.via;

/** The names of a body's fields, two levels deep ("admin.password", "host"), sorted; never a value. */
export function fieldNames(body: unknown): string[] {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return [];
  const names: string[] = [];
  for (const [key, value] of Object.entries(body as Record<string, unknown>)) {
    if (value !== null && typeof value === 'object' && !Array.isArray(value) && key !== 'labels') {
      const inner = Object.keys(value as object);
      if (inner.length === 0) names.push(key);
      for (const k of inner) names.push(`${key}.${k}`);
    } else names.push(key);
  }
  return names.sort().slice(0, MAX_FIELDS);
}

export class ApprovalService {
  readonly #repo: ApprovalRepo;
  readonly #audit: AuditLog;
  readonly #clock: Clock;
  readonly #ttlMs: number;
  readonly #digestKey: Buffer;

  constructor(deps: {
    repo: ApprovalRepo;
    audit: AuditLog;
    clock: Clock;
    /** KEYTURN_APPROVAL_TTL: how long a request may wait for its decisions and its repeat. */
    ttlMs: number;
    /**
     * The key of the body digest (the keyring's `approval-digest`, sealed in the local store and shared by every
     * replica): the digest is an HMAC under it, so that a digest in Redis cannot be used to guess a low-entropy
     * password the body carried.
     */
    digestKey: Buffer;
  }) {
    this.#repo = deps.repo;
    this.#audit = deps.audit;
    this.#clock = deps.clock;
    this.#ttlMs = deps.ttlMs;
    this.#digestKey = Buffer.from(deps.digestKey);
  }

  get ttlMs(): number {
    return this.#ttlMs;
  }

  /** Hex HMAC-SHA256 of the body in canonical JSON (no body: JSON null). */
  digest(body: unknown): string {
    const text = canonicalize(body === undefined ? null : body) ?? 'null';
    return createHmac('sha256', this.#digestKey).update(text, 'utf8').digest('hex');
  }

  #operation(request: GatedRequest): ApprovalOperation {
    return {
      route: request.route,
      action: request.action,
      target: request.target,
      bodyDigest: this.digest(request.body),
      fields: fieldNames(request.body),
    };
  }

  #now(): number {
    return this.#clock.now();
  }

  /** A gated request without an approval: a pending one, audited as approval.requested. */
  async request(request: GatedRequest, who: Actor, policy: ApprovalPolicy): Promise<PendingApproval> {
    const now = this.#now();
    const approval: Approval = {
      id: randomUUID(),
      operation: this.#operation(request),
      requester: { name: who.name, via: who.via },
      policy: { required: policy.required, approvers: [...policy.approvers] },
      status: 'pending',
      createdAt: new Date(now).toISOString(),
      expiresAt: new Date(now + this.#ttlMs).toISOString(),
      decisions: [],
    };
    await this.#repo.create(approval, now);
    await this.#append(approval, {
      actor: who.name,
      action: 'approval.requested',
      outcome: 'success',
      details: {
        requester: who.name,
        expiresAt: approval.expiresAt,
        required: policy.required,
        approvers: policy.approvers.join(','),
        fields: approval.operation.fields.join(','),
      },
    });
    return { approvalId: approval.id, status: 'pending', expiresAt: approval.expiresAt };
  }

  /**
   * The repeat of a gated request with `X-Keyturn-Approval`: only by its requester, only approved and unexpired, only
   * for the same route, target and body, and only while the target's policy is the one it was requested under. Marks
   * it used in the same check-and-set (a second repeat finds it used). Returns the approval to `settle` after the
   * operation ran. A refusal is a ForbiddenError (403) or ConflictError (409) naming the reason, and an audit event.
   */
  async claim(
    id: string,
    request: GatedRequest,
    who: Actor,
    policy: ApprovalPolicy | undefined,
  ): Promise<Approval> {
    for (let attempt = 0; attempt < SWAP_ATTEMPTS; attempt++) {
      const found = await this.#repo.find(id);
      if (!found) {
        throw await this.#refuse(
          null,
          request,
          who,
          new ConflictError(
            `Approval ${id} does not exist (or is past its retention): send the request without X-Keyturn-Approval to ask for a new one`,
            'approval_unknown',
          ),
        );
      }
      const { approval, raw } = found;
      if (!sameRequester(approval, who)) {
        throw await this.#refuse(
          approval,
          request,
          who,
          new ForbiddenError(
            `Approval ${id} was requested by ${approval.requester.name}, not ${who.name}: only the requester may use it`,
          ),
        );
      }
      if (this.#due(approval)) {
        await this.#expire(approval, raw);
        continue; // read again: it is expired now, whoever wrote it
      }
      const refusal = this.#unusable(approval, request, policy);
      if (refusal) throw await this.#refuse(approval, request, who, refusal);
      const used: Approval = { ...approval, status: 'used', usedAt: new Date(this.#now()).toISOString() };
      const swapped = await this.#repo.swap(id, raw, used);
      if (swapped === 'swapped') return used;
    }
    throw new ConflictError(`Approval ${id} is being changed by other requests at the same moment: retry`);
  }

  /** Why an approval cannot be used for this request, or undefined when it can. */
  #unusable(
    approval: Approval,
    request: GatedRequest,
    policy: ApprovalPolicy | undefined,
  ): Error | undefined {
    const id = approval.id;
    switch (approval.status) {
      case 'pending': {
        const approvals = approval.decisions.filter((d) => d.decision === 'approve').length;
        return new ConflictError(
          `Approval ${id} is still pending: it has ${approvals} of the ${approval.policy.required} approval(s) it needs (from ${approval.policy.approvers.join(', ')})`,
          'approval_pending',
        );
      }
      case 'denied': {
        const deny = approval.decisions.find((d) => d.decision === 'deny');
        return new ConflictError(
          `Approval ${id} was denied by ${deny?.by ?? 'an approver'}${deny ? `: ${deny.reason}` : ''}`,
          'approval_denied',
        );
      }
      case 'expired':
        return new ConflictError(
          `Approval ${id} expired at ${approval.expiresAt}: ask for a new one`,
          'approval_expired',
        );
      case 'used':
        return new ConflictError(
          `Approval ${id} was used at ${approval.usedAt}: an approval allows one request; ask for a new one`,
          'approval_used',
        );
    }
    const op = approval.operation;
    if (op.route !== request.route) {
      return new ConflictError(
        `Approval ${id} is for ${op.route}, not ${request.route}`,
        'approval_mismatch',
      );
    }
    if (op.target.kind !== request.target.kind || op.target.id !== request.target.id) {
      return new ConflictError(
        `Approval ${id} is for ${op.target.kind} "${op.target.id}", not ${request.target.kind} "${request.target.id}"`,
        'approval_mismatch',
      );
    }
    const digest = Buffer.from(this.digest(request.body), 'hex');
    const approved = Buffer.from(op.bodyDigest, 'hex');
    if (digest.length !== approved.length || !timingSafeEqual(digest, approved)) {
      return new ConflictError(
        `Approval ${id} was given for another request body: repeat the request exactly as it was sent when the approval was requested (fields ${op.fields.join(', ') || 'none'})`,
        'approval_mismatch',
      );
    }
    if (policyText(approval.policy) !== policyText(policy)) {
      return new ConflictError(
        `The approval policy of ${op.target.kind} "${op.target.id}" changed since approval ${id} was requested: ask for a new one`,
        'approval_policy_changed',
      );
    }
    return undefined;
  }

  /**
   * After the approved operation ran: audited as approval.used. An operation refused before it changed anything (a 4xx:
   * a rotation in flight, a conflict) gives the approval back, approved, so that the same request can be repeated once
   * the cause is gone; one that failed otherwise keeps it used (it may have done part of its work).
   */
  async settle(approval: Approval, outcome: { ok: true } | { ok: false; refused: boolean; reason: string }) {
    let released = false;
    if (!outcome.ok && outcome.refused) {
      for (let attempt = 0; attempt < SWAP_ATTEMPTS && !released; attempt++) {
        const found = await this.#repo.find(approval.id);
        if (found?.approval.status !== 'used' || found.approval.usedAt !== approval.usedAt) break;
        const { usedAt: _usedAt, ...rest } = found.approval;
        released =
          (await this.#repo.swap(approval.id, found.raw, { ...rest, status: 'approved' })) === 'swapped';
      }
    }
    await this.#append(approval, {
      actor: approval.requester.name,
      action: 'approval.used',
      outcome: outcome.ok ? 'success' : 'failure',
      details: {
        requester: approval.requester.name,
        approvedBy: approval.decisions
          .filter((d) => d.decision === 'approve')
          .map((d) => d.by)
          .join(','),
        ...(outcome.ok ? {} : { reason: outcome.reason, released }),
      },
    });
  }

  /** `X-Keyturn-Break-Glass`: the operation runs without approval, loudly (audit, and a webhook notification). */
  async breakGlass(request: GatedRequest, who: Actor, reason: string, policy: ApprovalPolicy): Promise<void> {
    const op = this.#operation(request);
    await this.#audit.append({
      actor: who.name,
      action: 'approval.break_glass',
      outcome: 'success',
      ...(op.target.kind === 'credential' ? { credential: op.target.id } : { connection: op.target.id }),
      details: {
        reason,
        requester: who.name,
        operation: op.route,
        action: op.action,
        target: `${op.target.kind}:${op.target.id}`,
        required: policy.required,
        approvers: policy.approvers.join(','),
        fields: op.fields.join(','),
      },
    });
  }

  /**
   * POST /v1/approvals/:id/approve and /deny: by a principal matching the approvers, never the requester, each once.
   * `required` approvals make it approved; one deny denies it. An expired one cannot be decided.
   */
  async decide(id: string, who: Actor, decision: 'approve' | 'deny', reason: string): Promise<Approval> {
    for (let attempt = 0; attempt < SWAP_ATTEMPTS; attempt++) {
      const found = await this.#repo.find(id);
      if (!found || !this.#mayView(found.approval, who)) throw this.#notFound(id);
      const { approval, raw } = found;
      if (this.#due(approval)) {
        await this.#expire(approval, raw);
        continue;
      }
      if (approval.status !== 'pending') {
        throw new ConflictError(
          `Approval ${id} is ${approval.status}${approval.status === 'expired' ? ` (at ${approval.expiresAt})` : ''}: only a pending approval can be decided`,
          approval.status === 'expired' ? 'approval_expired' : 'approval_decided',
        );
      }
      if (approval.requester.name === who.name) {
        throw await this.#refuseDecision(
          approval,
          who,
          decision,
          reason,
          new ForbiddenError(
            `${who.name} requested approval ${id}, and may not ${decision} it: dual control needs a second person`,
          ),
        );
      }
      if (!matchesApprovers(approval.policy, who)) {
        throw await this.#refuseDecision(
          approval,
          who,
          decision,
          reason,
          new ForbiddenError(
            `${who.name} is not an approver of approval ${id}: it needs ${approval.policy.approvers.join(' or ')}`,
          ),
        );
      }
      if (approval.decisions.some((d) => d.by === who.name)) {
        throw new ConflictError(`${who.name} has already decided approval ${id}`, 'approval_decided');
      }
      const at = new Date(this.#now()).toISOString();
      const decisions = [...approval.decisions, { by: who.name, via: who.via, decision, reason, at }];
      const approvals = decisions.filter((d) => d.decision === 'approve').length;
      const status: ApprovalStatus =
        decision === 'deny' ? 'denied' : approvals >= approval.policy.required ? 'approved' : 'pending';
      const next: Approval = {
        ...approval,
        decisions,
        status,
        ...(status !== 'pending' ? { decidedAt: at } : {}),
      };
      const swapped = await this.#repo.swap(id, raw, next);
      if (swapped === 'gone') throw this.#notFound(id);
      if (swapped === 'changed') continue;
      await this.#append(next, {
        actor: who.name,
        action: decision === 'approve' ? 'approval.approved' : 'approval.denied',
        outcome: 'success',
        details: {
          requester: approval.requester.name,
          decider: who.name,
          reason,
          status,
          approvals,
          required: approval.policy.required,
        },
      });
      return next;
    }
    throw new ConflictError(`Approval ${id} is being decided by others at the same moment: retry`);
  }

  /** One approval, for admins and auditors, its requester and those who may decide it; 404 for anyone else. */
  async get(id: string, who: Actor): Promise<Approval> {
    const found = await this.#repo.find(id);
    if (!found || !this.#mayView(found.approval, who)) throw this.#notFound(id);
    return this.#current(found.approval, found.raw);
  }

  /** The approvals `who` may see, newest first, optionally of one status; `next` continues the list. */
  async list(
    who: Actor,
    query: { status?: ApprovalStatus; limit: number; cursor?: ApprovalCursor },
  ): Promise<{ approvals: Approval[]; next: ApprovalCursor | null }> {
    const out: Approval[] = [];
    let before = query.cursor;
    let last: ApprovalCursor | undefined;
    // A page reads at most this many index entries, so a filter that matches little answers a short page with a next.
    let budget = 5000;
    for (;;) {
      const chunk = Math.max(query.limit, 200);
      const ids = await this.#repo.ids(chunk, before);
      const records = new Map((await this.#repo.many(ids.map((e) => e.id))).map((r) => [r.approval.id, r]));
      for (const entry of ids) {
        last = entry;
        budget--;
        const found = records.get(entry.id);
        if (!found || !this.#mayView(found.approval, who)) continue;
        const approval = await this.#current(found.approval, found.raw);
        if (query.status && approval.status !== query.status) continue;
        out.push(approval);
        if (out.length === query.limit) return { approvals: out, next: entry };
      }
      if (ids.length < chunk) return { approvals: out, next: null };
      if (budget <= 0) return { approvals: out, next: last ?? null };
      before = last;
    }
  }

  /** Admins and auditors see every approval; others those they requested or may decide. */
  #mayView(approval: Approval, who: Actor): boolean {
    return (
      who.roles.includes('admin') ||
      who.roles.includes('auditor') ||
      sameRequester(approval, who) ||
      matchesApprovers(approval.policy, who)
    );
  }

  #notFound(id: string): NotFoundError {
    return new NotFoundError(`Approval ${id} does not exist, or is not one you requested or may decide`);
  }

  #due(approval: Approval): boolean {
    return (
      (approval.status === 'pending' || approval.status === 'approved') &&
      this.#now() >= Date.parse(approval.expiresAt)
    );
  }

  /** The approval as it stands now: one past its expiry is made expired (and audited) on the first look. */
  async #current(approval: Approval, raw: string): Promise<Approval> {
    if (!this.#due(approval)) return approval;
    return (await this.#expire(approval, raw)) ?? { ...approval, status: 'expired' };
  }

  /**
   * Marks an approval past its expiry as expired; the request that does so appends approval.expired (once: the
   * check-and-set lets one writer through). Returns the expired record, or null when another writer changed it first.
   */
  async #expire(approval: Approval, raw: string): Promise<Approval | null> {
    const at = new Date(this.#now()).toISOString();
    const next: Approval = {
      ...approval,
      status: 'expired',
      expiredAt: at,
      decidedAt: approval.decidedAt ?? at,
    };
    if ((await this.#repo.swap(approval.id, raw, next)) !== 'swapped') return null;
    await this.#append(next, {
      actor: 'system',
      action: 'approval.expired',
      outcome: 'success',
      details: {
        requester: approval.requester.name,
        was: approval.status,
        expiresAt: approval.expiresAt,
        approvals: approval.decisions.filter((d) => d.decision === 'approve').length,
        required: approval.policy.required,
      },
    });
    return next;
  }

  async #refuse(approval: Approval | null, request: GatedRequest, who: Actor, error: Error): Promise<Error> {
    const op = approval?.operation ?? this.#operation(request);
    await this.#audit.append({
      actor: who.name,
      action: 'approval.refused',
      outcome: 'denied',
      ...(op.target.kind === 'credential' ? { credential: op.target.id } : { connection: op.target.id }),
      details: {
        ...(approval ? { approval: approval.id, requester: approval.requester.name } : {}),
        operation: request.route,
        target: `${request.target.kind}:${request.target.id}`,
        reason: error.message,
      },
    });
    return error;
  }

  async #refuseDecision(
    approval: Approval,
    who: Actor,
    decision: 'approve' | 'deny',
    reason: string,
    error: Error,
  ): Promise<Error> {
    await this.#append(approval, {
      actor: who.name,
      action: decision === 'approve' ? 'approval.approved' : 'approval.denied',
      outcome: 'denied',
      details: { requester: approval.requester.name, decider: who.name, reason, refused: error.message },
    });
    return error;
  }

  /** An event about one approval: its id, operation and target are in every one. */
  async #append(
    approval: Approval,
    event: Omit<AuditEventInput, 'credential' | 'connection'> & {
      details: Record<string, string | number | boolean | null>;
    },
  ): Promise<void> {
    const op = approval.operation;
    await this.#audit.append({
      ...event,
      ...(op.target.kind === 'credential' ? { credential: op.target.id } : { connection: op.target.id }),
      details: {
        approval: approval.id,
        operation: op.route,
        action: op.action,
        target: `${op.target.kind}:${op.target.id}`,
        ...event.details,
      },
    });
  }
}
