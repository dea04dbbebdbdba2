// How a credential's spec is kept in its Redis hash (field `spec`): JSON without what the key or the defaults already
// say. Issue 14 asked for at most 2 KiB of Redis per credential; the spec as the API shows it repeated its id (in the
// key already), the default password policy, the local store, empty labels and an updatedAt equal to createdAt, about
// 150 bytes of most credentials' records. `decodeSpec` puts them back, and reads the full form that earlier versions
// wrote, so no migration is needed.
//
// The registry's scripts compare the stored text (a PATCH's check-and-set, the schedule's basis): one spec has one
// encoding, since the fields are written in the order the API's objects have them. Scripts that read fields in Lua
// (the secret read's snapshot, the overdue scan) read only fields written whenever they differ from the default, and
// know the default of `store` (local).
import { DEFAULT_PASSWORD_POLICY, type PasswordPolicy } from '../crypto/password.ts';
import type { CredentialSpec } from './types.ts';

const samePolicy = (p: PasswordPolicy): boolean =>
  Object.keys(p).length === Object.keys(DEFAULT_PASSWORD_POLICY).length &&
  (Object.keys(DEFAULT_PASSWORD_POLICY) as Array<keyof PasswordPolicy>).every(
    (k) => p[k] === DEFAULT_PASSWORD_POLICY[k],
  );

export function encodeSpec(spec: CredentialSpec): string {
  const { id: _id, store, password, labels, updatedAt, ...rest } = spec;
  return JSON.stringify({
    ...rest,
    ...(store.type === 'local' && Object.keys(store).length === 1 ? {} : { store }),
    ...(samePolicy(password) ? {} : { password }),
    ...(Object.keys(labels).length ? { labels } : {}),
    ...(updatedAt === spec.createdAt ? {} : { updatedAt }),
  });
}

export function decodeSpec(id: string, text: string): CredentialSpec {
  const stored = JSON.parse(text) as Partial<CredentialSpec>;
  return {
    ...stored,
    id,
    store: stored.store ?? { type: 'local' },
    password: stored.password ?? { ...DEFAULT_PASSWORD_POLICY },
    labels: stored.labels ?? {},
    updatedAt: stored.updatedAt ?? (stored.createdAt as string),
  } as CredentialSpec;
}
