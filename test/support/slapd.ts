// An OpenLDAP slapd (Debian's package) of the test's own: a fresh mdb database in a temporary directory, plain LDAP
// and LDAPS (a certificate for 127.0.0.1 from test/support/pki.ts) on free loopback ports, and least-privilege ACLs
// as a directory team would grant Keyturn: its bind DN (cn=keyturn) may write userPassword, add and delete entries
// under ou=services and change group members under ou=groups, nothing more; cn=reader may only read.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Attribute, BerWriter, Change, Client, InvalidCredentialsError } from 'ldapts';
import { makePki } from './pki.ts';
import { freePort } from './ports.ts';

const SLAPD = ['/usr/sbin/slapd', 'slapd'].find((p) => p === 'slapd' || existsSync(p)) ?? 'slapd';
export const LDAP_SUFFIX = 'dc=example,dc=org';
export const LDAP_SERVICES = `ou=services,${LDAP_SUFFIX}`;
export const LDAP_GROUPS = `ou=groups,${LDAP_SUFFIX}`;
export const LDAP_USER_DN = `uid={username},${LDAP_SERVICES}`;

/** Why the LDAP tests cannot run here, or undefined. */
export function slapdSkipReason(): string | undefined {
  const slapd = spawnSync(SLAPD, ['-VV'], { encoding: 'utf8' });
  if (slapd.error) return `no slapd on this machine (${slapd.error.message}); install Debian's slapd package`;
  if (!existsSync('/usr/lib/ldap/back_mdb.so')) return 'slapd has no back_mdb module in /usr/lib/ldap';
  const openssl = spawnSync('openssl', ['version']);
  if (openssl.status !== 0) return 'no openssl CLI to make the LDAPS certificate';
  return undefined;
}

async function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = new Socket();
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
    socket.connect(port, '127.0.0.1');
  });
}

export interface Slapd {
  host: string;
  /** Plain LDAP. */
  port: number;
  /** LDAPS, with `ca`'s certificate for 127.0.0.1. */
  tlsPort: number;
  ca: string;
  /** Keyturn's least-privilege admin. */
  admin: { dn: string; password: string };
  /** A bind DN that may read and nothing else. */
  reader: { dn: string; password: string };
  /** As the directory's root: adds a service account with a password, in the given groups (made when missing). */
  addAccount(uid: string, password: string, groups?: string[]): Promise<void>;
  /** Whether a simple bind as uid=<uid> under ou=services with this password succeeds. */
  canBind(uid: string, password: string): Promise<boolean>;
  /** Whether a simple bind as this DN with this password succeeds. */
  canBindDn(dn: string, password: string): Promise<boolean>;
  /** As root: the values of an entry's attribute (empty when the entry does not exist). */
  read(dn: string, attribute: string): Promise<string[]>;
  /** As root: the entries under a base (their DNs), for before/after comparisons. */
  dump(): Promise<string>;
  stop(): Promise<void>;
}

/**
 * The body of POST /v1/connections (without the id) for this slapd: LDAPS with its certificate verified, accounts under
 * ou=services, Keyturn's least-privilege admin; `overrides` replace top-level fields.
 */
export function ldapConnectionBody(
  server: Slapd,
  overrides: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    type: 'ldap',
    host: server.host,
    port: server.tlsPort,
    tls: { mode: 'verify-full', ca: server.ca },
    admin: { username: server.admin.dn, password: server.admin.password },
    options: { userDn: LDAP_USER_DN },
    ...overrides,
  };
}

export async function startSlapd(): Promise<Slapd> {
  const dir = mkdtempSync(join(tmpdir(), 'kt-slapd-'));
  const pki = makePki();
  const rootPassword = randomBytes(18).toString('base64url');
  const admin = { dn: `cn=keyturn,${LDAP_SUFFIX}`, password: randomBytes(18).toString('base64url') };
  const reader = { dn: `cn=reader,${LDAP_SUFFIX}`, password: randomBytes(18).toString('base64url') };
  mkdirSync(join(dir, 'db'));
  const conf = join(dir, 'slapd.conf');
  writeFileSync(
    conf,
    [
      ...['core', 'cosine', 'inetorgperson', 'nis'].map((s) => `include /etc/ldap/schema/${s}.schema`),
      'modulepath /usr/lib/ldap',
      'moduleload back_mdb',
      `pidfile ${join(dir, 'slapd.pid')}`,
      `TLSCACertificateFile ${join(pki.dir, 'ca.crt')}`,
      `TLSCertificateFile ${pki.serverCert}`,
      `TLSCertificateKeyFile ${pki.serverKey}`,
      'database mdb',
      `suffix "${LDAP_SUFFIX}"`,
      `rootdn "cn=root,${LDAP_SUFFIX}"`,
      `rootpw ${rootPassword}`,
      `directory ${join(dir, 'db')}`,
      'maxsize 67108864',
      `access to attrs=userPassword by dn.exact="${admin.dn}" write by anonymous auth by self write by * none`,
      `access to dn.subtree="${LDAP_SERVICES}" by dn.exact="${admin.dn}" write by * read`,
      `access to dn.subtree="${LDAP_GROUPS}" attrs=member,uniqueMember,memberUid by dn.exact="${admin.dn}" write by * read`,
      'access to * by * read',
      '',
    ].join('\n'),
  );
  const [port, tlsPort] = [await freePort(), await freePort()];
  const child: ChildProcess = spawn(
    SLAPD,
    ['-f', conf, '-h', `ldap://127.0.0.1:${port}/ ldaps://127.0.0.1:${tlsPort}/`, '-d', '0'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  let exited = false;
  child.once('exit', () => {
    exited = true;
  });
  for (let i = 0; i < 200 && !exited && !(await listening(port)); i++) {
    await new Promise((resolve) => setTimeout(resolve, 50)); // slapd opens its database, then listens
  }
  if (exited || !(await listening(port))) {
    child.kill('SIGKILL');
    throw new Error(`slapd did not start on 127.0.0.1:${port}: ${stderr}`);
  }
  const url = `ldap://127.0.0.1:${port}`;
  const asRoot = async <T>(fn: (c: Client) => Promise<T>): Promise<T> => {
    const client = new Client({ url, timeout: 5000 });
    try {
      await client.bind(`cn=root,${LDAP_SUFFIX}`, rootPassword);
      return await fn(client);
    } finally {
      await client.unbind().catch(() => {});
    }
  };
  const setPassword = (c: Client, dn: string, password: string) => {
    const value = new BerWriter();
    value.startSequence();
    value.writeString(dn, 0x80);
    value.writeString(password, 0x82);
    value.endSequence();
    return c.exop('1.3.6.1.4.1.4203.1.11.1', value.buffer);
  };
  await asRoot(async (c) => {
    await c.add(LDAP_SUFFIX, { objectClass: ['dcObject', 'organization'], dc: 'example', o: 'Example' });
    for (const ou of ['services', 'groups']) {
      await c.add(`ou=${ou},${LDAP_SUFFIX}`, { objectClass: 'organizationalUnit', ou });
    }
    for (const who of [admin, reader]) {
      const cn = who.dn.slice(3, who.dn.indexOf(','));
      await c.add(who.dn, { objectClass: ['person'], cn, sn: cn });
      await setPassword(c, who.dn, who.password);
    }
  });
  const server: Slapd = {
    host: '127.0.0.1',
    port,
    tlsPort,
    ca: pki.ca.toString(),
    admin,
    reader,
    async addAccount(uid, password, groups = []) {
      const dn = `uid=${uid},${LDAP_SERVICES}`;
      await asRoot(async (c) => {
        await c.add(dn, {
          objectClass: ['inetOrgPerson', 'posixAccount'],
          uid,
          cn: uid,
          sn: 'service',
          uidNumber: '10001',
          gidNumber: '10001',
          homeDirectory: `/nonexistent/${uid}`,
        });
        await setPassword(c, dn, password);
        for (const group of groups) {
          const groupDn = `cn=${group},${LDAP_GROUPS}`;
          const found = await c.search(groupDn, { scope: 'base', attributes: ['1.1'] }).then(
            () => true,
            () => false,
          );
          if (found) {
            await c.modify(
              groupDn,
              new Change({ operation: 'add', modification: new Attribute({ type: 'member', values: [dn] }) }),
            );
          } else {
            await c.add(groupDn, { objectClass: 'groupOfNames', cn: group, member: dn });
          }
        }
      });
    },
    canBind: (uid, password) => server.canBindDn(`uid=${uid},${LDAP_SERVICES}`, password),
    async canBindDn(dn, password) {
      const client = new Client({ url, timeout: 5000 });
      try {
        await client.bind(dn, password);
        return true;
      } catch (err) {
        if (err instanceof InvalidCredentialsError) return false;
        throw err;
      } finally {
        await client.unbind().catch(() => {});
      }
    },
    read: (dn, attribute) =>
      asRoot(async (c) => {
        try {
          const { searchEntries } = await c.search(dn, { scope: 'base', attributes: [attribute] });
          return [searchEntries[0]?.[attribute] ?? []].flat().map(String);
        } catch {
          return [];
        }
      }),
    dump: () =>
      asRoot(async (c) => {
        const { searchEntries } = await c.search(LDAP_SUFFIX, {
          scope: 'sub',
          attributes: ['*', 'modifyTimestamp'],
        });
        return JSON.stringify(searchEntries.sort((a, b) => a.dn.localeCompare(b.dn)));
      }),
    async stop() {
      child.kill('SIGTERM');
      await new Promise((resolve) => (exited ? resolve(undefined) : child.once('exit', resolve)));
      rmSync(dir, { recursive: true, force: true });
      rmSync(pki.dir, { recursive: true, force: true });
    },
  };
  return server;
}
