// VAULT_AUTH_METHOD and the variables of each Vault login method: inferred as before from the one set of
// credentials given, explicit when named, and refused with one line per problem, never echoing a credential.
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/config.ts';

const ADDR = { VAULT_ADDR: 'https://vault.example.com:8200' };
const TOKEN = 'hvs.SECRETTOKENVALUE0000000000';
const SECRET_ID = '6a1e7c34-secret-id-value-0000';

function problems(env: Record<string, string>): string[] {
  try {
    loadConfig({ ...ADDR, ...env });
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    const list = (err as ConfigError).problems;
    for (const p of list) {
      expect(p).not.toContain(TOKEN);
      expect(p).not.toContain(SECRET_ID);
    }
    return list;
  }
  throw new Error(`loadConfig accepted ${Object.keys(env).join(', ')}`);
}

describe('Vault authentication settings', () => {
  it('infers the method from the one set of credentials given, as before', () => {
    expect(loadConfig({ ...ADDR, VAULT_TOKEN: TOKEN }).vault?.auth).toEqual({
      method: 'token',
      token: TOKEN,
    });
    expect(loadConfig({ ...ADDR, VAULT_ROLE_ID: 'role-1', VAULT_SECRET_ID: SECRET_ID }).vault?.auth).toEqual({
      method: 'approle',
      roleId: 'role-1',
      secretId: SECRET_ID,
      mount: 'approle',
    });
    expect(loadConfig({ ...ADDR, VAULT_K8S_ROLE: 'keyturn' }).vault?.auth).toEqual({
      method: 'kubernetes',
      role: 'keyturn',
      tokenPath: '/var/run/secrets/kubernetes.io/serviceaccount/token',
      mount: 'kubernetes',
    });
  });

  it('VAULT_AUTH_METHOD=kubernetes with its role, token path and mount', () => {
    const config = loadConfig({
      ...ADDR,
      VAULT_AUTH_METHOD: 'Kubernetes',
      VAULT_K8S_ROLE: ' keyturn ',
      VAULT_K8S_TOKEN_PATH: '/var/run/secrets/tokens/vault-token',
      VAULT_K8S_MOUNT: 'k8s/prod-cluster',
      VAULT_NAMESPACE: 'team-a',
    });
    expect(config.vault).toEqual({
      address: ADDR.VAULT_ADDR,
      auth: {
        method: 'kubernetes',
        role: 'keyturn',
        tokenPath: '/var/run/secrets/tokens/vault-token',
        mount: 'k8s/prod-cluster',
      },
      namespace: 'team-a',
      pendingPrefix: 'keyturn-pending',
    });
    expect(
      loadConfig({
        ...ADDR,
        VAULT_AUTH_METHOD: 'approle',
        VAULT_ROLE_ID: 'r',
        VAULT_SECRET_ID: SECRET_ID,
        VAULT_APPROLE_MOUNT: 'ci',
      }).vault?.auth,
    ).toMatchObject({ method: 'approle', mount: 'ci' });
  });

  it.each([
    [
      {},
      'VAULT_ADDR is set but no Vault authentication is: set VAULT_TOKEN, VAULT_ROLE_ID with VAULT_SECRET_ID (AppRole), or VAULT_K8S_ROLE (Kubernetes auth)',
    ],
    [
      { VAULT_AUTH_METHOD: 'kubernetes' },
      "VAULT_AUTH_METHOD=kubernetes needs VAULT_K8S_ROLE, the Vault role bound to Keyturn's service account",
    ],
    [{ VAULT_AUTH_METHOD: 'token' }, 'VAULT_AUTH_METHOD=token needs VAULT_TOKEN'],
    [{ VAULT_AUTH_METHOD: 'approle' }, 'VAULT_AUTH_METHOD=approle needs VAULT_ROLE_ID and VAULT_SECRET_ID'],
    [
      { VAULT_AUTH_METHOD: 'approle', VAULT_ROLE_ID: 'r' },
      'VAULT_ROLE_ID and VAULT_SECRET_ID go together (AppRole): set both',
    ],
    [{ VAULT_SECRET_ID: SECRET_ID }, 'VAULT_ROLE_ID and VAULT_SECRET_ID go together (AppRole): set both'],
    [
      { VAULT_AUTH_METHOD: 'ldap', VAULT_TOKEN: TOKEN },
      'VAULT_AUTH_METHOD must be token, approle or kubernetes, got "ldap"',
    ],
    [
      { VAULT_TOKEN: TOKEN, VAULT_K8S_ROLE: 'keyturn' },
      'Vault authentication is ambiguous: VAULT_TOKEN (token), VAULT_K8S_ROLE (kubernetes) are set together; set VAULT_AUTH_METHOD to the one Keyturn uses',
    ],
    [
      { VAULT_AUTH_METHOD: 'kubernetes', VAULT_K8S_ROLE: 'keyturn', VAULT_TOKEN: TOKEN },
      'VAULT_AUTH_METHOD is kubernetes but VAULT_TOKEN (token) is also set: unset it, or set VAULT_AUTH_METHOD=token',
    ],
    [
      { VAULT_AUTH_METHOD: 'token', VAULT_TOKEN: TOKEN, VAULT_ROLE_ID: 'r', VAULT_SECRET_ID: SECRET_ID },
      'VAULT_AUTH_METHOD is token but VAULT_ROLE_ID and VAULT_SECRET_ID (approle) are also set: unset them, or set VAULT_AUTH_METHOD=approle',
    ],
    [
      { VAULT_K8S_ROLE: 'keyturn', VAULT_K8S_TOKEN_PATH: 'token' },
      'VAULT_K8S_TOKEN_PATH must be an absolute file path such as /var/run/secrets/kubernetes.io/serviceaccount/token, got "token"',
    ],
    [
      { VAULT_K8S_ROLE: 'keyturn', VAULT_K8S_MOUNT: '/kubernetes/' },
      'VAULT_K8S_MOUNT must be the path the Kubernetes auth method is mounted at, such as "kubernetes"',
    ],
  ])('refuses %j with one clear line', (env, message) => {
    expect(problems(env as Record<string, string>)).toEqual([message]);
  });

  it('a method named in VAULT_AUTH_METHOD is refused beside one bad variable each, all in one pass', () => {
    expect(
      problems({ VAULT_AUTH_METHOD: 'kubernetes', VAULT_K8S_MOUNT: 'a b', VAULT_K8S_TOKEN_PATH: 'rel' }),
    ).toEqual([
      "VAULT_AUTH_METHOD=kubernetes needs VAULT_K8S_ROLE, the Vault role bound to Keyturn's service account",
      'VAULT_K8S_MOUNT must be the path the Kubernetes auth method is mounted at, such as "kubernetes"',
      'VAULT_K8S_TOKEN_PATH must be an absolute file path such as /var/run/secrets/kubernetes.io/serviceaccount/token, got "rel"',
    ]);
  });

  it('no Vault variables: no Vault store, whatever VAULT_K8S_* says without VAULT_ADDR', () => {
    expect(loadConfig({ VAULT_K8S_ROLE: 'keyturn' }).vault).toBeUndefined();
  });
});
