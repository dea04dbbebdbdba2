// What the API needs of the audit chain, in one place: reading it, verifying it, exporting it, and the public
// keys that check its signatures. The API never holds the private key: only the sealer (worker) signs.
import type { KeyObject } from 'node:crypto';
import type { RedisClient } from '../redis/client.ts';
import type { RedisKeys } from '../registry/keys.ts';
import type { ExportRecord } from './chain.ts';
import { ChainStore } from './chain-store.ts';
import { exportRecords, type RangeQuery, requestCheckpoint, verifyStore } from './export.ts';
import type { VerifyResult } from './verifier.ts';

export class AuditTrail {
  readonly store: ChainStore;
  readonly publicKeys: KeyObject[];
  readonly #redis: RedisClient;
  readonly #keys: RedisKeys;

  constructor(redis: RedisClient, keys: RedisKeys, publicKeys: KeyObject[]) {
    this.#redis = redis;
    this.#keys = keys;
    this.store = new ChainStore(redis, keys);
    this.publicKeys = publicKeys;
  }

  verify(range?: { start: string; end: string }): Promise<VerifyResult & { pending: number }> {
    return verifyStore(this.store, this.publicKeys, range);
  }

  /** Asks the sealer to sign everything appended so far; false if none did within `waitMs`. */
  signUpToNow(waitMs: number): Promise<boolean> {
    return requestCheckpoint(this.#redis, this.#keys, this.store, waitMs);
  }

  export(query: RangeQuery, now: Date): AsyncGenerator<ExportRecord> {
    return exportRecords(this.store, query, now);
  }
}
