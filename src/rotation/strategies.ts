// Naming of the second user of alternating-users, as in the AWS rotation templates (get_alt_username).
export const CLONE_SUFFIX = '_clone';

export function cloneUsername(username: string): string {
  return `${username}${CLONE_SUFFIX}`;
}

/** The other user of an alternating pair. */
export function alternateUsername(base: string, active: string): string {
  return active === base ? cloneUsername(base) : base;
}
