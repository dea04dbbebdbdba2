// What the API returns for registry objects: never a secret, always the fields a person needs to act.
import { isOverdue } from '../compliance/policy.ts';
import type { Lease } from '../leases/types.ts';
import type { Approval } from '../registry/approvals.ts';
import type { Connection, Credential } from '../registry/types.ts';

export function credentialView(credential: Credential, now = Date.now()) {
  const { spec, state } = credential;
  return {
    id: spec.id,
    connection: spec.connection,
    username: spec.username,
    strategy: spec.strategy,
    schedule: spec.schedule,
    store: spec.store,
    password: spec.password,
    maxAgeDays: spec.maxAgeDays ?? null,
    gracePeriod: spec.gracePeriod ?? null,
    notifyBefore: spec.notifyBefore ?? null,
    labels: spec.labels,
    sync: spec.sync ?? [],
    approval: spec.approval ?? null,
    paused: spec.pausedAt !== undefined,
    pausedSince: spec.pausedAt ?? null,
    status: state.status,
    version: state.version ?? null,
    activeUsername: state.activeUsername ?? null,
    rotatedAt: state.rotatedAt ?? null,
    nextRotationAt: state.nextRotationAt ?? null,
    lastRotationId: state.lastRotationId ?? null,
    lastOutcome: state.lastOutcome ?? null,
    consecutiveFailures: state.failures ?? 0,
    overdue: isOverdue(credential, now),
    createdAt: spec.createdAt,
    updatedAt: spec.updatedAt,
  };
}

export function connectionView(connection: Connection, credentials?: string[]) {
  return {
    id: connection.id,
    type: connection.type,
    host: connection.host,
    port: connection.port,
    database: connection.database ?? null,
    ...(connection.region !== undefined ? { region: connection.region } : {}),
    ...(connection.endpoint !== undefined ? { endpoint: connection.endpoint } : {}),
    tls: connection.tls
      ? { mode: connection.tls.mode, ca: connection.tls.ca ? 'set' : null }
      : { mode: 'disable' },
    admin: { username: connection.admin.username, store: connection.adminStore },
    options: connection.options ?? {},
    labels: connection.labels,
    paused: connection.pausedAt !== undefined,
    pausedSince: connection.pausedAt ?? null,
    adminRotation: connection.adminRotation ?? null,
    approval: connection.approval ?? null,
    ...(credentials ? { credentials } : {}),
    createdAt: connection.createdAt,
    updatedAt: connection.updatedAt,
  };
}

export function leaseView(lease: Lease) {
  return {
    id: lease.id,
    credential: lease.credential,
    connection: lease.connection,
    username: lease.username,
    status: lease.status,
    createdBy: lease.createdBy,
    createdAt: lease.createdAt,
    expiresAt: lease.expiresAt,
    maxExpiresAt: lease.maxExpiresAt,
    ttl: lease.ttlSeconds,
    renewals: lease.renewals,
    renewedAt: lease.renewedAt ?? null,
    revokeReason: lease.revokeReason ?? null,
    revokedAt: lease.revokedAt ?? null,
    revokeAttempts: lease.revokeAttempts ?? 0,
    lastError: lease.lastError ?? null,
  };
}

/** An approval of dual control: what it allows, who asked, who decided and why. Never a request body (none is kept). */
export function approvalView(approval: Approval) {
  const approvals = approval.decisions.filter((d) => d.decision === 'approve').length;
  return {
    id: approval.id,
    status: approval.status,
    operation: {
      route: approval.operation.route,
      action: approval.operation.action,
      target: approval.operation.target,
      fields: approval.operation.fields,
      bodyDigest: approval.operation.bodyDigest,
    },
    requester: approval.requester.name,
    required: approval.policy.required,
    approvers: approval.policy.approvers,
    approvals,
    decisions: approval.decisions.map((d) => ({
      by: d.by,
      decision: d.decision,
      reason: d.reason,
      at: d.at,
    })),
    createdAt: approval.createdAt,
    expiresAt: approval.expiresAt,
    decidedAt: approval.decidedAt ?? null,
    usedAt: approval.usedAt ?? null,
  };
}
