// A lease: a short-lived downstream user made for one caller, with the access of a credential's user, revoked
// when it expires. Its password is returned once, to the caller, and kept nowhere.

export type LeaseStatus =
  /** Recorded, its user being made downstream (write-ahead: a crash here leaves a record the sweep finds). */
  | 'creating'
  /** Its user exists and works until expiresAt. */
  | 'active'
  /** Its user is being dropped (expired, asked for, or its creation failed); retried until it is gone. */
  | 'revoking'
  /** Its user is gone. The record stays readable for the retention period. */
  | 'revoked';

export type RevokeReason =
  | 'expired'
  | 'requested'
  | 'creation-failed'
  | 'creation-stalled'
  | 'credential-deleted';

export interface Lease {
  id: string;
  credential: string;
  connection: string;
  /** The downstream user made for this lease. */
  username: string;
  /** The credential's user whose access the lease user has (and who inherits what it owns when dropped). */
  of: string;
  status: LeaseStatus;
  /** Who asked for it (the principal in audit events). */
  createdBy: string;
  createdAt: string;
  expiresAt: string;
  /** The latest expiresAt that renewals may reach. */
  maxExpiresAt: string;
  /** The TTL the lease was issued with: a renewal without one extends by this much. */
  ttlSeconds: number;
  renewals: number;
  renewedAt?: string;
  revokeReason?: RevokeReason;
  revokedAt?: string;
  /** Failed revocation attempts, and the last one's scrubbed error. */
  revokeAttempts?: number;
  lastError?: string;
  /** Optimistic concurrency: every write checks and bumps it, so a write based on a stale read is refused. */
  rev: number;
}
