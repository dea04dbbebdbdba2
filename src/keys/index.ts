// The key providers of one process (KEYTURN_KEK_PROVIDER picks the primary, which wraps every new data key) and the
// others it can still unwrap with: every provider whose settings are present. Moving from one key or provider to
// another is: configure the new one as primary and keep the old one configured, run `keyturn rekey`, then remove the
// old one (README, key providers).
import { KEK_PROVIDERS, type KekProviderName, type KekSettings } from '../config/config.ts';
import { Envelope, type KeyProvider, type Keyring } from '../crypto/envelope.ts';
import { AwsKmsKeyProvider } from './aws-kms-provider.ts';
import { EnvKeyProvider } from './env-provider.ts';
import { type VaultRequester, VaultTransitKeyProvider } from './vault-transit-provider.ts';

export { EnvKeyProvider, masterKeyId } from './env-provider.ts';
export type { VaultRequester } from './vault-transit-provider.ts';

export interface KeyringSettings extends KekSettings {
  /** KEYTURN_MASTER_KEY, or the development key boot.ts made (the env provider's key). */
  masterKey?: Buffer;
  timeoutMs: number;
}

export interface KeyringDeps {
  /** Keyturn's Vault (VAULT_ADDR), for vault-transit. */
  vault?: VaultRequester;
}

/** What each provider needs, and how it is made: the compiler lists every place a new provider must appear. */
const MAKERS: Record<KekProviderName, (s: KeyringSettings, d: KeyringDeps) => KeyProvider | string> = {
  env: (s) =>
    s.masterKey
      ? new EnvKeyProvider(s.masterKey)
      : 'KEYTURN_KEK_PROVIDER=env needs KEYTURN_MASTER_KEY (make one with `openssl rand -base64 32`)',
  'aws-kms': (s) =>
    s.kms
      ? new AwsKmsKeyProvider({ ...s.kms, timeoutMs: s.timeoutMs })
      : 'KEYTURN_KEK_PROVIDER=aws-kms needs KEYTURN_KMS_KEY_ID (a key id, ARN or alias/name)',
  'vault-transit': (s, d) =>
    !s.transit
      ? 'KEYTURN_KEK_PROVIDER=vault-transit needs KEYTURN_TRANSIT_KEY (a transit key name)'
      : !d.vault
        ? 'KEYTURN_TRANSIT_KEY needs VAULT_ADDR and Vault authentication (VAULT_TOKEN, AppRole or Kubernetes)'
        : new VaultTransitKeyProvider(s.transit, d.vault),
};

/** Whether a provider's settings are present (it then reads values even when it is not the primary). */
const CONFIGURED: Record<KekProviderName, (s: KeyringSettings) => boolean> = {
  env: (s) => s.masterKey !== undefined,
  'aws-kms': (s) => s.kms !== undefined,
  'vault-transit': (s) => s.transit !== undefined,
};

export class KeyringError extends Error {}

/** The primary provider and every other configured one; nothing is called yet (checkKeyring does). */
export function createKeyring(settings: KeyringSettings, deps: KeyringDeps): Keyring {
  const make = (name: KekProviderName): KeyProvider => {
    const made = MAKERS[name](settings, deps);
    if (typeof made === 'string') throw new KeyringError(made);
    return made;
  };
  const primary = make(settings.provider);
  const others = KEK_PROVIDERS.filter((n) => n !== settings.provider && CONFIGURED[n](settings)).map(make);
  const previous = settings.previousMasterKeys.map(
    (k, i) => new EnvKeyProvider(k, `KEYTURN_MASTER_KEY_PREVIOUS[${i}]`),
  );
  return { primary, all: [primary, ...others, ...previous] };
}

/**
 * Checks every provider at start: the primary must work (nothing can be sealed otherwise), a reader that fails is
 * reported and kept (the values it wrapped fail to open, each with the provider's reason, until it answers).
 */
export async function checkKeyring(keyring: Keyring, warn: (message: string) => void): Promise<void> {
  await keyring.primary.check();
  for (const p of keyring.all.slice(1)) {
    await p
      .check()
      .catch((err: Error) => warn(`key provider ${p.kid} (read only) failed its check: ${err.message}`));
  }
}

/** A keyring of the given providers, the first primary (tools and tests that hold the keys themselves). */
export function keyringOf(primary: KeyProvider, ...others: KeyProvider[]): Keyring {
  return { primary, all: [primary, ...others] };
}

/** An envelope whose only key is a master key held here (the env provider): tools and tests. */
export function envEnvelope(masterKey: Buffer): Envelope {
  return new Envelope(keyringOf(new EnvKeyProvider(masterKey)));
}
