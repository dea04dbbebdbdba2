// The secret read path (GET /v1/credentials/:id/secret): returns a version that works downstream right now
// (I1). Normally that is the current version. During a single-user rotation the user's password changes under
// the store's feet, so the in-flight rotation's record decides: once its set step has landed the pending
// version is the one that works; while the downstream change is in the air (sent but not confirmed, or being
// rolled back) the only honest answer is to ask the downstream, which this does with one login.
import type { Registry } from '../registry/registry.ts';
import type { Credential } from '../registry/types.ts';
import { credentialSecretRef, type StoreSet } from '../stores/index.ts';
import type { SecretVersion } from '../stores/types.ts';
import { secretCacheMaxAge } from './cache-hint.ts';
import { openDownstream } from './downstream.ts';
import type { RotationRepo } from './rotation-repo.ts';
import type { Rotation } from './types.ts';

export interface WorkingSecret {
  credential: Credential;
  version: SecretVersion;
  /** A rotation is in flight: clients should not cache this answer. */
  rotating: boolean;
  /** How long a client may cache it (Cache-Control max-age, seconds): see cache-hint.ts. */
  maxAgeSeconds: number;
}

export class SecretReader {
  readonly #registry: Registry;
  readonly #rotations: RotationRepo;
  readonly #stores: StoreSet;
  readonly #timeoutMs: number;
  readonly #maxAgeMs: number;

  constructor(deps: {
    registry: Registry;
    rotations: RotationRepo;
    stores: StoreSet;
    timeoutMs: number;
    /** KEYTURN_SECRET_MAX_AGE. */
    maxAgeMs: number;
  }) {
    this.#registry = deps.registry;
    this.#rotations = deps.rotations;
    this.#stores = deps.stores;
    this.#timeoutMs = deps.timeoutMs;
    this.#maxAgeMs = deps.maxAgeMs;
  }

  /** The working secret, or null when the credential has no version yet (first rotation still running). */
  async read(credential: Credential): Promise<WorkingSecret | null> {
    const found = await this.#working(credential);
    if (!found) return null;
    const maxAgeSeconds = secretCacheMaxAge({
      rotating: found.rotating,
      nextRotationAt: credential.state.nextRotationAt,
      gracePeriod: credential.spec.gracePeriod,
      maxAgeMs: this.#maxAgeMs,
      now: Date.now(),
    });
    return { ...found, maxAgeSeconds };
  }

  async #working(credential: Credential): Promise<Omit<WorkingSecret, 'maxAgeSeconds'> | null> {
    const store = this.#stores.get(credential.spec.store);
    const ref = credentialSecretRef(credential.spec);
    const inflight = await this.#rotations.inflight(credential.spec.id);
    if (inflight && credential.spec.strategy === 'single-user' && inflight.setStarted) {
      const pending = await store.read(ref, { versionId: inflight.id });
      if (pending) {
        if (this.#settled(inflight)) return { credential, version: pending, rotating: true };
        const current = await store.read(ref, { stage: 'current' });
        if (!current) return { credential, version: pending, rotating: true };
        const works = await this.#probe(credential, pending).catch(() => false);
        return { credential, version: works ? pending : current, rotating: true };
      }
    }
    const current = await store.read(ref, { stage: 'current' });
    if (!current) return null;
    return { credential, version: current, rotating: inflight !== null };
  }

  /** The set step has landed and no rollback is under way: the pending password is the live one. */
  #settled(rotation: Rotation): boolean {
    return rotation.setDone && rotation.status !== 'rolling_back';
  }

  async #probe(credential: Credential, candidate: SecretVersion): Promise<boolean> {
    const connection = await this.#registry.getConnection(credential.spec.connection);
    const { session } = await openDownstream(connection, this.#stores, this.#timeoutMs);
    try {
      const r = await session.authenticate({
        username: candidate.value.username,
        password: candidate.value.password,
      });
      return r.ok;
    } finally {
      await session.close();
    }
  }
}
