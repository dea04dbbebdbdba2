// Naming of the second user of alternating-users lives with the registry types (the registry claims both names).
import { cloneUsername } from '../registry/types.ts';

export { CLONE_SUFFIX, cloneUsername } from '../registry/types.ts';

/** The other user of an alternating pair. */
export function alternateUsername(base: string, active: string): string {
  return active === base ? cloneUsername(base) : base;
}

const LABEL_PREFIX = 'keyturn:';

/**
 * The label Keyturn puts on the clone it makes (or adopts) for a credential, where the downstream can label users
 * (PostgreSQL: the role's COMMENT; MySQL 8.0.21+: the account's ATTRIBUTE). A user without it was not made by Keyturn.
 */
export function cloneLabel(credentialId: string): string {
  return `${LABEL_PREFIX}${credentialId}`;
}

/** The credential a label names, or null when it is not one of Keyturn's. */
export function labelledFor(label: string | null | undefined): string | null {
  return label?.startsWith(LABEL_PREFIX) ? label.slice(LABEL_PREFIX.length) : null;
}
