// A credential's age against its policy: the one rule behind the API's `overdue` flag, the compliance report, the
// overdue scan and the overdue metric, so that all of them agree on what "overdue" means.
import type { Credential } from '../registry/types.ts';

export const DAY_MS = 86_400_000;
/** Without maxAgeDays a credential is overdue once its next rotation is this late. */
export const OVERDUE_SLACK_MS = 60 * 60_000;

/** When the current password was set: its last rotation (or import), else the registration. */
export function passwordSetAt(credential: Credential): number {
  return Date.parse(credential.state.rotatedAt ?? credential.spec.createdAt);
}

/**
 * The instant the credential leaves its policy: maxAgeDays after its password was set, or, without maxAgeDays, an
 * hour after its planned next rotation. Undefined when nothing bounds it (no maxAgeDays and no next rotation).
 */
export function policyDeadline(credential: Credential): number | undefined {
  const { spec, state } = credential;
  if (spec.maxAgeDays !== undefined) return passwordSetAt(credential) + spec.maxAgeDays * DAY_MS;
  if (state.nextRotationAt !== undefined) return Date.parse(state.nextRotationAt) + OVERDUE_SLACK_MS;
  return undefined;
}

export function isOverdue(credential: Credential, now: number = Date.now()): boolean {
  const deadline = policyDeadline(credential);
  return deadline !== undefined && now > deadline;
}

/** True while no rotation by Keyturn has succeeded: the password is the registered (imported) one, or none yet. */
export function neverRotated(credential: Credential): boolean {
  const { version } = credential.state;
  return version === undefined || version.startsWith('import-');
}
