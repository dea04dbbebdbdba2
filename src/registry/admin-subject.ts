// A connection's admin subject (registry/types.ts, adminSubjectId): the credential record its admin password rotates
// as. Written by the registry service when a connection gets adminRotation or is asked to rotate its admin, and by
// the reconciler when a crash left a connection with adminRotation but no subject.
import { DEFAULT_PASSWORD_POLICY } from '../crypto/password.ts';
import { adminSubjectId, type Connection, type CredentialSpec } from './types.ts';

/** The admin subject's spec: the connection's admin, its store, schedule and policy. */
export function adminSubjectSpec(connection: Connection): CredentialSpec {
  const now = new Date().toISOString();
  return {
    id: adminSubjectId(connection.id),
    connection: connection.id,
    username: connection.admin.username,
    strategy: 'single-user',
    // Without adminRotation no slot is ever armed for it (Queues.syncSchedule): this schedule only fills the field.
    schedule: connection.adminRotation?.schedule ?? { every: '3650d' },
    store: connection.adminStore,
    password: DEFAULT_PASSWORD_POLICY,
    ...(connection.adminRotation?.maxAgeDays ? { maxAgeDays: connection.adminRotation.maxAgeDays } : {}),
    labels: {},
    createdAt: now,
    updatedAt: now,
  };
}
