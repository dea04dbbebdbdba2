// A process that appends audit events and runs a sealer, as every API and worker process does: the 8-process
// test starts several of these at once on one prefix. Settings come from the environment.
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { AuditLog } from '../../src/audit/audit-log.ts';
import { AuditSealer } from '../../src/audit/sealer.ts';
import { AuditTrail } from '../../src/audit/trail.ts';
import { compareStreamIds } from '../../src/audit/verifier.ts';
import { systemClock } from '../../src/clock.ts';
import { createLogger } from '../../src/logging/logger.ts';
import { testKeys, testRedis } from './harness.ts';

const { KEYTURN_PREFIX, APPENDER, COUNT, KEYTURN_AUDIT_SIGNING_KEY } = process.env;
// The machine's Redis, or the cluster of the cluster run (KEYTURN_TEST_REDIS_CLUSTER_HOSTS is inherited).
const redis = testRedis();
const keys = testKeys(KEYTURN_PREFIX!);
const signer = createPrivateKey(KEYTURN_AUDIT_SIGNING_KEY!);
const trail = new AuditTrail(redis, keys, [createPublicKey(signer)]);
const sealer = new AuditSealer({
  redis,
  keys,
  store: trail.store,
  signer,
  publicKey: createPublicKey(signer),
  settings: { checkpointEvents: 100, checkpointIntervalMs: 1000, batch: 50 },
  clock: systemClock,
  logger: createLogger({ level: 'silent', format: 'json' }),
});
sealer.start();
const audit = new AuditLog(redis, keys);
let last = '';
for (let n = 0; n < Number(COUNT); n++) {
  last = await audit.append({
    actor: `appender-${APPENDER}`,
    action: 'test.appended',
    outcome: 'success',
    details: { appender: Number(APPENDER), n },
  });
}
// Wait until whichever sealer holds the lock has sealed this process's last event.
for (;;) {
  const head = await trail.store.head();
  if (head.id && compareStreamIds(head.id, last) >= 0) break;
  await new Promise((resolve) => setTimeout(resolve, 50));
}
await sealer.close();
redis.disconnect();
process.stdout.write(`appender ${APPENDER} appended ${COUNT}\n`);
