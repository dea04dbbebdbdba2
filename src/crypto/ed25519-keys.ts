// Ed25519 keys read from PEM text (the audit chain's signing key and its public keys), each with a message that names
// what is wrong and never the key. Configuration checks the signing key with it at start, so it sits at the bottom.
import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';

/** Parses an Ed25519 private key; throws a message naming what is wrong (never the key). */
export function parseSigningKey(pem: string, source: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: 'pem' });
  } catch {
    throw new Error(
      `${source} is not a PEM private key (make one with \`openssl genpkey -algorithm ed25519\`)`,
    );
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new Error(`${source} must be an Ed25519 key, got ${key.asymmetricKeyType}`);
  }
  return key;
}

/** Every public key in a PEM text (one or more BEGIN PUBLIC KEY blocks). */
export function parsePublicKeys(pem: string, source: string): KeyObject[] {
  const blocks = pem.match(/-----BEGIN PUBLIC KEY-----[\s\S]+?-----END PUBLIC KEY-----/g) ?? [];
  if (blocks.length === 0) throw new Error(`${source} holds no PEM public key (BEGIN PUBLIC KEY)`);
  return blocks.map((block, i) => {
    let key: KeyObject;
    try {
      key = createPublicKey(block);
    } catch {
      throw new Error(`${source}: public key ${i + 1} does not parse`);
    }
    if (key.asymmetricKeyType !== 'ed25519') {
      throw new Error(`${source}: public key ${i + 1} must be Ed25519, got ${key.asymmetricKeyType}`);
    }
    return key;
  });
}
