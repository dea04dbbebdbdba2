// Which MySQL-family servers hold two passwords per account, from their VERSION(); and what open() does when it
// cannot ask (a real, closed port: no fake involved).
import { createServer } from 'node:net';
import { describe, expect, it } from 'vitest';
import type { Connection } from '../../src/registry/types.ts';
import { mysqlTarget, supportsDualPasswords } from '../../src/targets/mysql/mysql-target.ts';
import { TargetUnavailableError } from '../../src/targets/types.ts';

describe('supportsDualPasswords', () => {
  it.each([
    ['8.0.13', false],
    ['8.0.14', true],
    ['8.0.36-28', true], // Percona Server
    ['8.0.40-0ubuntu0.22.04.1', true],
    ['8.1.0', true],
    ['8.4.3', true],
    ['9.1.0', true],
    ['10.0.0', true],
    ['8.0', false],
    ['5.7.44-log', false],
    ['5.6.51', false],
    ['10.11.6-MariaDB-0+deb12u1', false],
    ['11.4.2-MariaDB', false],
    ['5.5.5-10.11.6-MariaDB', false],
    ['', false],
    ['mysql', false],
  ])('%s → %s', (version, expected) => {
    expect(supportsDualPasswords(version)).toBe(expected);
  });
});

describe('mysqlTarget.open', () => {
  it('throws TargetUnavailableError when the server cannot be asked its version', async () => {
    // A port that was free a moment ago: nothing listens there.
    const port = await new Promise<number>((resolve) => {
      const probe = createServer().listen(0, '127.0.0.1', () => {
        const { port } = probe.address() as { port: number };
        probe.close(() => resolve(port));
      });
    });
    const connection: Connection = {
      id: 'closed',
      type: 'mysql',
      host: '127.0.0.1',
      port,
      admin: { username: 'admin' },
      adminStore: { type: 'local' },
      labels: {},
      createdAt: new Date().toISOString(),
      updatedAt: new Date().toISOString(),
    };
    const opening = mysqlTarget.open(
      connection,
      { username: 'admin', password: 'admin-secret-0000' },
      { timeoutMs: 2000 },
    );
    await expect(opening).rejects.toBeInstanceOf(TargetUnavailableError);
    await expect(opening).rejects.toThrow(/asking the server its version/);
    await expect(opening).rejects.not.toThrow(/admin-secret-0000/);
  });
});
