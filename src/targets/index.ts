// The map of downstream drivers by connection type. Adding a downstream means adding its folder and one line
// here; the engine, the API and the stores stay as they are. Each line wraps its driver in the middleware
// (middleware.ts: secrets noted for scrubbing, a deadline that cancels, a measure of every call).

import { awsIamTarget } from './aws-iam/aws-iam-target.ts';
import { ldapTarget } from './ldap/ldap-target.ts';
import { withMiddleware } from './middleware.ts';
import { mysqlTarget } from './mysql/mysql-target.ts';
import { postgresTarget } from './postgres/postgres-target.ts';
import { rabbitmqTarget } from './rabbitmq/rabbitmq-target.ts';
import { redisTarget } from './redis/redis-target.ts';
import type { TargetDriver } from './types.ts';
import { webhookTarget } from './webhook/webhook-target.ts';

export const TARGET_DRIVERS: Readonly<Record<string, TargetDriver>> = {
  [postgresTarget.type]: withMiddleware(postgresTarget),
  [mysqlTarget.type]: withMiddleware(mysqlTarget),
  [webhookTarget.type]: withMiddleware(webhookTarget),
  [redisTarget.type]: withMiddleware(redisTarget),
  [rabbitmqTarget.type]: withMiddleware(rabbitmqTarget),
  [ldapTarget.type]: withMiddleware(ldapTarget),
  [awsIamTarget.type]: withMiddleware(awsIamTarget),
};

export function targetDriver(type: string): TargetDriver | undefined {
  return Object.hasOwn(TARGET_DRIVERS, type) ? TARGET_DRIVERS[type] : undefined;
}
