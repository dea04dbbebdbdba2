// A write to apply in one script with others, only while a credential's execution lease is held (rotation/lease.ts
// runs them). The owners of keys make the ops of their own records (the registry: a credential's state; the rotation
// records; the audit outbox), so the lease knows no record and the engine writes no hash by hand.

/** [command, key, args…], or a field merge (mergeFieldsOp). */
export type FencedOp = [string, ...(string | number)[]];

/** The pseudo-command of mergeFieldsOp, run by the lease's script itself (no Redis command has this name). */
export const MERGE_FIELDS = 'KEYTURN_MERGE_FIELDS';

/**
 * A fenced op that sets some fields of the JSON object in a hash field and leaves the others as they are (`null`
 * removes a field); nothing is written when the field is gone, so a deleted credential is never brought back. A
 * credential's state is written this way: only what the step changed, never a copy read earlier that another writer
 * (a PATCH's next rotation, a grace-period revocation) may have changed since (finding 6 of issue 11).
 */
export function mergeFieldsOp(key: string, field: string, changes: Record<string, unknown>): FencedOp {
  const json = JSON.stringify(changes, (_name, v) => (v === undefined ? null : v));
  return [MERGE_FIELDS, key, field, json];
}
