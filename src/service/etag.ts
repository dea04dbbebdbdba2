// Optimistic concurrency for the registry's objects (issue 18): GET answers an ETag, PATCH and DELETE honour
// If-Match. `keyturn apply` plans from what it read and writes each change only over that same version, so two
// applies (or an apply and a person) at the same moment cannot write over each other: the second gets 412 and
// plans again.
//
// The tag is a digest of the stored definition (a credential's spec, a connection's record), never of its state:
// a rotation finishing changes no tag, so an apply is not refused because the schedule did its work. Neither record
// holds a secret (admin and credential passwords live in the stores), so the tag reveals nothing about one.
import { createHash } from 'node:crypto';
import { ConflictError } from '../registry/errors.ts';
import type { Connection, CredentialSpec } from '../registry/types.ts';

/** A strong entity tag: the quoted, truncated SHA-256 of the definition as stored. */
export function etagOf(definition: Connection | CredentialSpec): string {
  return `"${createHash('sha256').update(JSON.stringify(definition)).digest('base64url').slice(0, 27)}"`;
}

/** The object changed since the client read the version it names in If-Match: 412, read it again. */
export class PreconditionFailedError extends ConflictError {
  constructor(message: string) {
    super(message, 'precondition_failed');
    this.name = 'PreconditionFailedError';
  }
}

/**
 * Refuses a write over another version than the one the client read. `ifMatch` is the header as sent: one tag, a
 * list of tags, or "*" (any version: the object must exist, which the caller's read has already proven).
 */
export function checkIfMatch(
  ifMatch: string | undefined,
  definition: Connection | CredentialSpec,
  what: string,
): void {
  if (ifMatch === undefined) return;
  const wanted = ifMatch.split(',').map((t) => t.trim().replace(/^W\//, ''));
  if (wanted.includes('*')) return;
  if (wanted.includes(etagOf(definition))) return;
  throw new PreconditionFailedError(
    `${what} changed since you read it (If-Match ${ifMatch} is not its version ${etagOf(definition)}): read it again and retry`,
  );
}
