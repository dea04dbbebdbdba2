// The map of downstream drivers by connection type. Adding a downstream means adding its folder and one line
// here; the engine, the API and the stores stay as they are.

import { noteSecret } from '../crypto/secret-scope.ts';
import { mysqlTarget } from './mysql/mysql-target.ts';
import { postgresTarget } from './postgres/postgres-target.ts';
import { redisTarget } from './redis/redis-target.ts';
import type { Login, TargetDriver, TargetSession } from './types.ts';
import { webhookTarget } from './webhook/webhook-target.ts';

type SessionVerb = {
  [K in keyof TargetSession]-?: NonNullable<TargetSession[K]> extends (...args: never[]) => unknown
    ? K
    : never;
}[keyof TargetSession];

/**
 * Where each session verb takes a password: every one is noted in the current secret scope before the driver sees it,
 * so that whatever the downstream echoes in an error is scrubbed everywhere (finding 10 of issue 11). A Record over
 * every verb: a new verb does not compile until it says where its passwords are.
 */
const PASSWORDS_OF: Record<SessionVerb, (...args: never[]) => unknown[]> = {
  authenticate: (login: Login) => [login?.password],
  userExists: () => [],
  createUser: (_username: string, password: string) => [password],
  updatePassword: (_username: string, password: string) => [password],
  deleteUser: () => [],
  accessOf: () => [],
  labelOf: () => [],
  setLabel: () => [],
  setPasswords: (_username: string, passwords: { keep: string; password: string }) => [
    passwords?.keep,
    passwords?.password,
  ],
  removePassword: (_username: string, passwords: { remove: string; keep: string }) => [
    passwords?.remove,
    passwords?.keep,
  ],
  createLeaseUser: (_username: string, password: string) => [password],
  extendLeaseUser: () => [],
  dropLeaseUser: () => [],
  close: () => [],
};

/** A session whose verbs note their passwords in the current secret scope first. */
function notingSession(session: TargetSession): TargetSession {
  return new Proxy(session, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target);
      if (typeof value !== 'function' || !Object.hasOwn(PASSWORDS_OF, prop)) return value;
      const passwords = PASSWORDS_OF[prop as SessionVerb] as (...args: unknown[]) => unknown[];
      return (...args: unknown[]) => {
        for (const p of passwords(...args)) noteSecret(p);
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
}

/** A driver whose admin login and sessions note their passwords in the current secret scope. */
function notingSecrets(driver: TargetDriver): TargetDriver {
  return {
    ...driver,
    async open(connection, admin, options) {
      noteSecret(admin.password);
      return notingSession(await driver.open(connection, admin, options));
    },
  };
}

export const TARGET_DRIVERS: Readonly<Record<string, TargetDriver>> = {
  [postgresTarget.type]: notingSecrets(postgresTarget),
  [mysqlTarget.type]: notingSecrets(mysqlTarget),
  [webhookTarget.type]: notingSecrets(webhookTarget),
  [redisTarget.type]: notingSecrets(redisTarget),
};

export function targetDriver(type: string): TargetDriver | undefined {
  return Object.hasOwn(TARGET_DRIVERS, type) ? TARGET_DRIVERS[type] : undefined;
}
