// registry/spec-codec.ts: a spec kept without what its key and the defaults say, read back whole; the full form of
// earlier versions still reads.
import { describe, expect, it } from 'vitest';
import { DEFAULT_PASSWORD_POLICY } from '../../src/crypto/password.ts';
import { decodeSpec, encodeSpec } from '../../src/registry/spec-codec.ts';
import type { CredentialSpec } from '../../src/registry/types.ts';

const base: CredentialSpec = {
  id: 'payments-api',
  connection: 'payments-db',
  username: 'payments_app',
  strategy: 'single-user',
  schedule: { every: '30d' },
  store: { type: 'local' },
  password: { ...DEFAULT_PASSWORD_POLICY },
  labels: {},
  createdAt: '2026-12-01T00:00:00.000Z',
  updatedAt: '2026-12-01T00:00:00.000Z',
};

describe('spec codec', () => {
  it('leaves out the id, the default policy, the local store, empty labels and an unchanged updatedAt', () => {
    const text = encodeSpec(base);
    expect(JSON.parse(text)).toEqual({
      connection: 'payments-db',
      username: 'payments_app',
      strategy: 'single-user',
      schedule: { every: '30d' },
      createdAt: '2026-12-01T00:00:00.000Z',
    });
    expect(text.length).toBeLessThan(JSON.stringify(base).length - 120);
    expect(decodeSpec('payments-api', text)).toEqual(base);
  });

  it('keeps whatever differs from a default, and reads it back unchanged', () => {
    const spec: CredentialSpec = {
      ...base,
      strategy: 'alternating-users',
      schedule: { cron: '0 3 * * 1', timezone: 'Europe/London', jitter: '10m' },
      store: { type: 'vault', path: 'kv/payments' } as CredentialSpec['store'],
      password: { ...DEFAULT_PASSWORD_POLICY, length: 48 },
      maxAgeDays: 90,
      gracePeriod: '1h',
      labels: { team: 'payments' },
      updatedAt: '2026-12-02T00:00:00.000Z',
    };
    const stored = JSON.parse(encodeSpec(spec));
    expect(stored.store).toEqual(spec.store);
    expect(stored.password.length).toBe(48);
    expect(stored.labels).toEqual({ team: 'payments' });
    expect(stored.updatedAt).toBe('2026-12-02T00:00:00.000Z');
    expect(decodeSpec(spec.id, encodeSpec(spec))).toEqual(spec);
  });

  it('one spec, one text: encoding what was decoded gives the stored text again (the check-and-set compares it)', () => {
    const text = encodeSpec(base);
    expect(encodeSpec(decodeSpec('payments-api', text))).toBe(text);
  });

  it('reads the full form earlier versions wrote', () => {
    expect(decodeSpec('payments-api', JSON.stringify(base))).toEqual(base);
  });
});
