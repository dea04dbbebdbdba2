// One contract, every secret store: the same cases run against the local store, the Vault and AWS emulators,
// and a real Vault or AWS endpoint when configured. The suite prints which backends ran and why others did not.
import { randomUUID } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import type { SecretDocument, SecretRef } from '../../src/stores/types.ts';
import { StoreConflictError, StoreUnavailableError } from '../../src/stores/types.ts';
import { BACKENDS, type Backend, stopContainers } from './backends.ts';

const plan = await Promise.all(BACKENDS.map(async (b) => ({ factory: b, skip: await b.skipReason() })));
const lines = plan.map(
  ({ factory, skip }) => `  ${skip ? 'skipped' : 'runs   '}  ${factory.name}${skip ? `: ${skip}` : ''}`,
);
console.log(`store contract backends:\n${lines.join('\n')}`);

afterAll(stopContainers);

const doc = (password: string, username = 'payments_app'): SecretDocument => ({
  engine: 'postgres',
  host: 'db.internal',
  port: 5432,
  dbname: 'payments',
  username,
  password,
});
const token = () => randomUUID();

for (const { factory, skip } of plan) {
  describe.skipIf(Boolean(skip))(`store contract: ${factory.name}`, () => {
    let backend: Backend;
    const fresh = async (): Promise<SecretRef> => {
      backend ??= await factory.start();
      return backend.ref();
    };
    afterAll(async () => backend?.close());

    it('first write: a current version readable by stage and by id', async () => {
      const ref = await fresh();
      expect(await backend.store.describe(ref)).toBeNull();
      expect(await backend.store.read(ref, { stage: 'current' })).toBeNull();
      const t0 = token();
      await backend.store.putCurrent(ref, t0, doc('first-password-000'));
      const current = await backend.store.read(ref, { stage: 'current' });
      expect(current).toMatchObject({ versionId: t0, stages: ['current'], value: doc('first-password-000') });
      expect((await backend.store.read(ref, { versionId: t0 }))?.value.password).toBe('first-password-000');
      expect(await backend.store.describe(ref)).toEqual({ [t0]: ['current'] });
      expect(Number.isNaN(Date.parse(current!.createdAt))).toBe(false);
    });

    it('pending, then promote: pending becomes current, the old current previous', async () => {
      const ref = await fresh();
      const [t0, t1] = [token(), token()];
      await backend.store.putCurrent(ref, t0, doc('password-zero-0000'));
      expect(
        await backend.store.putPending(ref, t1, doc('password-one-11111', 'payments_app_clone')),
      ).toEqual({ created: true });
      // Pending is not current: readers of the current version still get the old one.
      expect((await backend.store.read(ref, { stage: 'current' }))?.versionId).toBe(t0);
      expect(await backend.store.read(ref, { stage: 'pending' })).toMatchObject({
        versionId: t1,
        value: doc('password-one-11111', 'payments_app_clone'),
      });
      expect(await backend.store.describe(ref)).toEqual({ [t0]: ['current'], [t1]: ['pending'] });

      expect(await backend.store.promote(ref, t1)).toEqual({ promoted: true, previousVersionId: t0 });
      expect((await backend.store.read(ref, { stage: 'current' }))?.value.password).toBe(
        'password-one-11111',
      );
      expect((await backend.store.read(ref, { stage: 'previous' }))?.value.password).toBe(
        'password-zero-0000',
      );
      expect(await backend.store.read(ref, { stage: 'pending' })).toBeNull();
      expect(await backend.store.describe(ref)).toEqual({ [t1]: ['current'], [t0]: ['previous'] });
    });

    it('previous is kept through the next rotation, and versions stay readable by id', async () => {
      const ref = await fresh();
      const [t0, t1, t2] = [token(), token(), token()];
      await backend.store.putCurrent(ref, t0, doc('password-zero-0000'));
      for (const [t, pw] of [
        [t1, 'password-one-11111'],
        [t2, 'password-two-22222'],
      ] as const) {
        await backend.store.putPending(ref, t, doc(pw));
        await backend.store.promote(ref, t);
      }
      expect((await backend.store.read(ref, { stage: 'current' }))?.versionId).toBe(t2);
      expect((await backend.store.read(ref, { stage: 'previous' }))?.versionId).toBe(t1);
      expect((await backend.store.read(ref, { versionId: t1 }))?.value.password).toBe('password-one-11111');
      expect((await backend.store.read(ref, { versionId: t2 }))?.stages).toEqual(['current']);
      const stages = await backend.store.describe(ref);
      expect(stages?.[t2]).toEqual(['current']);
      expect(stages?.[t1]).toEqual(['previous']);
      expect(stages?.[t0] ?? []).toEqual([]);
    });

    it('every step is idempotent: a retried putPending, promote or discard changes nothing more', async () => {
      const ref = await fresh();
      const [t0, t1, t2] = [token(), token(), token()];
      await backend.store.putCurrent(ref, t0, doc('password-zero-0000'));
      await backend.store.putCurrent(ref, t0, doc('password-zero-0000'));
      expect(await backend.store.putPending(ref, t1, doc('password-one-11111'))).toEqual({ created: true });
      // The retry of create never replaces the stored secret, even with another value (never generate twice).
      expect(await backend.store.putPending(ref, t1, doc('password-one-XXXXX'))).toEqual({ created: false });
      expect((await backend.store.read(ref, { versionId: t1 }))?.value.password).toBe('password-one-11111');
      const versionsBefore = await backend.versionsWritten?.(ref);
      expect((await backend.store.promote(ref, t1)).promoted).toBe(true);
      expect(await backend.store.promote(ref, t1)).toEqual({ promoted: false });
      if (versionsBefore !== undefined) {
        expect(await backend.versionsWritten?.(ref)).toBe(versionsBefore + backend.versionsPerPromote);
      }
      expect((await backend.store.read(ref, { stage: 'previous' }))?.versionId).toBe(t0);
      // Discard of a rolled-back rotation, twice; never touches current or previous.
      await backend.store.putPending(ref, t2, doc('password-two-22222'));
      await backend.store.discardPending(ref, t2);
      await backend.store.discardPending(ref, t2);
      await backend.store.discardPending(ref, t1);
      expect(await backend.store.read(ref, { stage: 'pending' })).toBeNull();
      expect(await backend.store.describe(ref)).toEqual({ [t1]: ['current'], [t0]: ['previous'] });
      await expect(backend.store.promote(ref, token())).rejects.toThrow(StoreConflictError);
    });

    it('a leftover pending version of a broken rotation gives way to the next one', async () => {
      const ref = await fresh();
      const [t0, broken, next] = [token(), token(), token()];
      await backend.store.putCurrent(ref, t0, doc('password-zero-0000'));
      await backend.store.putPending(ref, broken, doc('password-broken-00'));
      await backend.store.putPending(ref, next, doc('password-next-0000'));
      expect((await backend.store.read(ref, { stage: 'pending' }))?.versionId).toBe(next);
      await backend.store.promote(ref, next);
      expect(await backend.store.describe(ref)).toEqual({ [next]: ['current'], [t0]: ['previous'] });
    });

    it('concurrent writers: two workers finishing the same rotation make exactly one new version', async () => {
      const ref = await fresh();
      const [t0, t1] = [token(), token()];
      await backend.store.putCurrent(ref, t0, doc('password-zero-0000'));
      const results = await Promise.all([
        backend.store.putPending(ref, t1, doc('password-one-AAAAA')),
        backend.store.putPending(ref, t1, doc('password-one-BBBBB')),
      ]);
      // Whichever wrote first, both now see the same stored value.
      const stored = (await backend.store.read(ref, { versionId: t1 }))?.value.password;
      expect(['password-one-AAAAA', 'password-one-BBBBB']).toContain(stored);
      expect(results.filter((r) => r.created).length).toBeLessThanOrEqual(1);
      const versionsBefore = await backend.versionsWritten?.(ref);
      const promotions = await Promise.allSettled([
        backend.store.promote(ref, t1),
        backend.store.promote(ref, t1),
      ]);
      expect(promotions.some((p) => p.status === 'fulfilled')).toBe(true);
      for (const p of promotions)
        if (p.status === 'rejected') expect(p.reason).toBeInstanceOf(StoreConflictError);
      expect((await backend.store.read(ref, { stage: 'current' }))?.value.password).toBe(stored);
      expect((await backend.store.read(ref, { stage: 'previous' }))?.versionId).toBe(t0);
      if (versionsBefore !== undefined) {
        expect(await backend.versionsWritten?.(ref)).toBe(versionsBefore + backend.versionsPerPromote);
      }
    });

    it('store unavailable mid-rotation, then back: the step fails as unavailable and its retry completes', async () => {
      const ref = await fresh();
      const [t0, t1] = [token(), token()];
      await backend.store.putCurrent(ref, t0, doc('password-zero-0000'));
      await backend.store.putPending(ref, t1, doc('password-one-11111'));
      try {
        await backend.breakNext();
      } catch (err) {
        console.log(`  ${factory.name}: outage not simulated (${(err as Error).message})`);
        return;
      }
      await expect(backend.store.promote(ref, t1)).rejects.toThrow(StoreUnavailableError);
      await backend.restore();
      expect((await backend.store.read(ref, { stage: 'current' }))?.versionId).toMatch(
        new RegExp(`^(${t0}|${t1})$`),
      );
      await backend.store.promote(ref, t1);
      expect(await backend.store.describe(ref)).toEqual({ [t1]: ['current'], [t0]: ['previous'] });
      expect((await backend.store.read(ref, { stage: 'current' }))?.value.password).toBe(
        'password-one-11111',
      );
    });

    it('remove deletes the secret', async () => {
      const ref = await fresh();
      await backend.store.putCurrent(ref, token(), doc('password-zero-0000'));
      await backend.store.remove(ref);
      expect(await backend.store.read(ref, { stage: 'current' })).toBeNull();
    });
  });
}
