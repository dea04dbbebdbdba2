// Development defaults: when no admin token or master key is configured, `npm start` must still run. It makes
// them once and keeps them in the state folder (mode 0600), so that restarts find the same store key and the
// same token. In production both come from the environment (or a secret manager) and this code is not used.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';

export interface DevSecret {
  value: string;
  path: string;
  created: boolean;
}

async function readOrCreate(dir: string, file: string, make: () => string): Promise<DevSecret> {
  const folder = resolve(dir);
  await mkdir(folder, { recursive: true, mode: 0o700 });
  const path = join(folder, file);
  try {
    const value = (await readFile(path, 'utf8')).trim();
    if (value) return { value, path, created: false };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const value = make();
  // 'wx' so that two processes starting together never overwrite each other's key.
  try {
    await writeFile(path, `${value}\n`, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return readOrCreate(dir, file, make);
    throw err;
  }
  await chmod(path, 0o600);
  return { value, path, created: true };
}

/** The development admin token, made on first use. */
export function devAdminToken(stateDir: string): Promise<DevSecret> {
  return readOrCreate(stateDir, 'admin-token', () => randomBytes(32).toString('base64url'));
}

/** The development master key (base64 of 32 bytes), made on first use. */
export function devMasterKey(stateDir: string): Promise<DevSecret> {
  return readOrCreate(stateDir, 'master-key', () => randomBytes(32).toString('base64'));
}

/** The development Ed25519 key that signs audit checkpoints (PKCS#8 PEM), made on first use. */
export function devAuditSigningKey(stateDir: string): Promise<DevSecret> {
  return readOrCreate(stateDir, 'audit-signing-key.pem', () =>
    String(generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' })).trim(),
  );
}
