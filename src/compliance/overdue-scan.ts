// The overdue scan (worker component, every KEYTURN_OVERDUE_SCAN_INTERVAL_MS and once at worker start): finds the
// credentials past their policy by the runtime's clock and, once per lapse across any number of workers and scans,
// appends `credential.overdue` to the audit stream. The notifier follows that stream, so the event is also what
// sends the overdue webhook.
//
// Once per lapse: a lapse is identified by when the overdue password was set (passwordSetAt). The mark in
// `<p>:overdue:notified` holds that time per credential and only moves forward; one script compares it, raises it
// and appends the event. A rotation sets a new password, hence a later time, so the credential's next lapse is
// notified again without the mark ever being cleared: clearing it (HDEL when back within policy) would let a scan
// that read the credential before the rotation raise the old lapse a second time. The script also re-reads the
// credential's rotatedAt, so a rotation that lands between the scan's read and its write is never reported overdue.

import { auditAppendOp } from '../audit/audit-log.ts';
import { AuditOutbox } from '../audit/outbox.ts';
import type { Clock } from '../clock.ts';
import type { Logger } from '../logging/logger.ts';
import type { RedisClient } from '../redis/client.ts';
import type { RedisKeys } from '../registry/keys.ts';
import type { Registry } from '../registry/registry.ts';
import type { Credential } from '../registry/types.ts';
import { DAY_MS, isOverdue, passwordSetAt, policyDeadline } from './policy.ts';

// KEYS: the marks, the credential, its audit outbox. ARGV: credential id, lapse (ms), the audit append as a JSON command, then what
// the scan judged by ('' for absent): rotatedAt, maxAgeDays, nextRotationAt. Returns 1 when this call raised the
// lapse, 0 when it was raised before, -1 when the credential changed meanwhile or is gone (the next scan decides).
const RAISE_LAPSE = `
local raw = redis.call('HMGET', KEYS[2], 'spec', 'state')
if not raw[1] or not raw[2] then return -1 end
local spec, state = cjson.decode(raw[1]), cjson.decode(raw[2])
local function text(v) if v == nil or v == cjson.null then return '' end return tostring(v) end
if text(state.rotatedAt) ~= ARGV[4] or text(spec.maxAgeDays) ~= ARGV[5] or text(state.nextRotationAt) ~= ARGV[6] then
  return -1
end
local marked = redis.call('HGET', KEYS[1], ARGV[1])
if marked and tonumber(marked) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call(unpack(cjson.decode(ARGV[3])))
return 1
`;

const READ_BATCH = 500;
/** The audit action of a lapse, and the notification type it becomes. */
export const OVERDUE_ACTION = 'credential.overdue';

export interface OverdueScanResult {
  /** Credentials overdue at the scan's time. */
  overdue: number;
  /** Credentials whose lapse this scan raised (audit event and notification); another scan raised the others. */
  raised: string[];
}

export class OverdueScanner {
  readonly #redis: RedisClient;
  readonly #keys: RedisKeys;
  readonly #outbox: AuditOutbox;
  readonly #registry: Registry;
  readonly #clock: Clock;
  readonly #log: Logger;

  constructor(deps: {
    redis: RedisClient;
    keys: RedisKeys;
    registry: Registry;
    clock: Clock;
    logger: Logger;
  }) {
    this.#redis = deps.redis;
    this.#keys = deps.keys;
    this.#outbox = new AuditOutbox(deps.redis, deps.keys);
    this.#registry = deps.registry;
    this.#clock = deps.clock;
    this.#log = deps.logger.child({ component: 'overdue-scan' });
  }

  async scan(): Promise<OverdueScanResult> {
    const now = this.#clock.now();
    const result: OverdueScanResult = { overdue: 0, raised: [] };
    for await (const batch of this.#registry.credentialBatches(READ_BATCH)) {
      const lapsed = batch.filter((c) => isOverdue(c, now));
      result.overdue += lapsed.length;
      if (lapsed.length === 0) continue;
      const answers = await Promise.allSettled(lapsed.map((credential) => this.#raise(credential, now)));
      answers.forEach((answer, i) => {
        const id = lapsed[i]?.spec.id;
        if (answer.status === 'rejected') {
          this.#log.error(
            { credential: id, err: { message: (answer.reason as Error).message } },
            'raising a lapse failed',
          );
        } else if (answer.value === 1 && id) {
          result.raised.push(id);
          this.#log.warn({ credential: id }, 'credential is overdue: past its rotation policy');
        }
      });
    }
    await this.#forgetDeleted();
    return result;
  }

  /** Raises one credential's lapse (mark and audit event in one script of its slot): 1, 0 or -1 as RAISE_LAPSE. */
  async #raise(credential: Credential, now: number): Promise<number> {
    const { spec, state } = credential;
    const setAt = passwordSetAt(credential);
    const deadline = policyDeadline(credential);
    const event = auditAppendOp(this.#keys.auditOutbox(spec.id), {
      actor: 'system',
      action: OVERDUE_ACTION,
      outcome: 'failure',
      credential: spec.id,
      connection: spec.connection,
      details: {
        ageDays: Math.floor(((now - setAt) / DAY_MS) * 10) / 10,
        maxAgeDays: spec.maxAgeDays ?? null,
        rotatedAt: new Date(setAt).toISOString(),
        overdueSince: deadline === undefined ? null : new Date(deadline).toISOString(),
        version: state.version ?? null,
      },
    });
    await this.#outbox.announce(spec.id);
    const raised = (await this.#redis.eval(
      RAISE_LAPSE,
      3,
      this.#keys.overdueNotified(spec.id),
      this.#keys.credential(spec.id),
      this.#keys.auditOutbox(spec.id),
      spec.id,
      setAt,
      JSON.stringify(event),
      state.rotatedAt ?? '',
      spec.maxAgeDays === undefined ? '' : String(spec.maxAgeDays),
      state.nextRotationAt ?? '',
    )) as number;
    if (raised === 1) await this.#outbox.relay(spec.id);
    return raised;
  }

  /** Drops the marks of deleted credentials (a re-registered id starts later, so a stale mark never hides a lapse). */
  async #forgetDeleted(): Promise<void> {
    // In a Cluster each mark is in its credential's slot, and goes with it (Registry.deleteCredential).
    if (this.#keys.clustered) return;
    const marks = this.#keys.overdueNotified('');
    const ids = await this.#redis.hkeys(marks);
    if (ids.length === 0) return;
    const exists = await Promise.all(ids.map((id) => this.#redis.exists(this.#keys.credential(id))));
    const gone = ids.filter((_, i) => exists[i] === 0);
    if (gone.length > 0) await this.#redis.hdel(marks, ...gone);
  }
}
