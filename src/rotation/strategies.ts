// Naming of the second user of alternating-users lives with the registry types (the registry claims both names).
import { cloneUsername } from '../registry/types.ts';

export { CLONE_SUFFIX, cloneUsername } from '../registry/types.ts';

/** The other user of an alternating pair. */
export function alternateUsername(base: string, active: string): string {
  return active === base ? cloneUsername(base) : base;
}
