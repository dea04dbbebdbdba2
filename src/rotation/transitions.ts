// A rotation's status changes, in one place: the table of allowed moves (docs/architecture.md, "The rotation state
// machine", draws it and lists it; a test holds the two equal) and one named move per transition, after BullMQ's
// moveToCompleted / moveToFailed. Each move checks the table and changes the record in memory only; the engine
// persists it, fenced by the credential's lease, together with what the step wrote. Pure: tested without Redis.
import type { Rotation, RotationStatus } from './types.ts';

/** Every status a rotation may move to from each status. A move not listed is a bug, refused loudly. */
export const TRANSITIONS: Readonly<Record<RotationStatus, readonly RotationStatus[]>> = {
  // A worker takes it; or its credential was deleted before it started.
  queued: ['running', 'failed'],
  // The next step; a worker that resumes it after a crash (running again, one more attempt); a step that failed with
  // attempts left; the last attempt or a refusal; the finish; its credential deleted under it.
  running: ['running', 'retrying', 'rolling_back', 'succeeded', 'failed'],
  // Its backoff ended and a worker takes it; or its credential was deleted meanwhile.
  retrying: ['running', 'failed'],
  // A rollback that could not restore the downstream yet stays here and is retried; it ends failed once restored
  // (or its credential was deleted).
  rolling_back: ['rolling_back', 'failed'],
  succeeded: [],
  failed: [],
};

export class IllegalTransitionError extends Error {
  constructor(rotation: Rotation, to: RotationStatus) {
    super(
      `rotation ${rotation.id} cannot move from ${rotation.status} to ${to} (allowed: ${TRANSITIONS[rotation.status].join(', ') || 'none, it has ended'})`,
    );
    this.name = 'IllegalTransitionError';
  }
}

export function canMove(from: RotationStatus, to: RotationStatus): boolean {
  return TRANSITIONS[from].includes(to);
}

function move(rotation: Rotation, to: RotationStatus, at: string): void {
  if (!canMove(rotation.status, to)) throw new IllegalTransitionError(rotation, to);
  rotation.status = to;
  rotation.updatedAt = at;
}

/** A worker starts (or resumes) the rotation under its lease: one more attempt. */
export function moveToRunning(rotation: Rotation, at: string): void {
  move(rotation, 'running', at);
  rotation.attempts += 1;
  rotation.startedAt ??= at;
}

/**
 * A step failed and attempts are left: the job is re-queued with backoff. A failed test means the downstream does not
 * hold the pending password, so the retry starts again at set, which checks first.
 */
export function moveToRetrying(rotation: Rotation, at: string): void {
  move(rotation, 'retrying', at);
  if (rotation.step === 'test') rotation.step = 'set';
}

/** The last attempt failed, or the failure was a refusal that retrying cannot fix: put the downstream back. */
export function moveToRollingBack(rotation: Rotation, at: string): void {
  move(rotation, 'rolling_back', at);
}

/** The rollback could not restore the downstream yet: the rotation stays in flight and a rollback job retries. */
export function moveToRollbackPending(rotation: Rotation, note: string, at: string): void {
  move(rotation, 'rolling_back', at);
  rotation.rollback = { outcome: 'pending', note, at };
}

/** Promoted, the state committed: the new version is current. */
export function moveToSucceeded(rotation: Rotation, at: string): void {
  move(rotation, 'succeeded', at);
  rotation.finishedAt = at;
  delete rotation.error;
}

/** Rolled back: the old version is current and works again downstream. */
export function moveToRolledBack(rotation: Rotation, note: string, at: string): void {
  move(rotation, 'failed', at);
  rotation.finishedAt = at;
  rotation.rollback = { outcome: 'done', note, at };
}

/** Ended without a rollback, because its credential is gone: there is nothing left to restore. */
export function moveToAbandoned(rotation: Rotation, reason: string, at: string): void {
  move(rotation, 'failed', at);
  rotation.finishedAt = at;
  rotation.error = { step: rotation.step, message: reason, at };
}
