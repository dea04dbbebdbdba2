import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, describe, expect, inject, it } from 'vitest';

const server = inject('pg');

function client(user: string, password: string): pg.Client {
  return new pg.Client({
    host: server.host,
    port: server.port,
    database: server.database,
    user,
    password,
    connectionTimeoutMillis: 10_000,
  });
}

/** Connects, runs `sql`, disconnects; returns the first row. */
async function queryAs(
  user: string,
  password: string,
  sql: string,
): Promise<Record<string, unknown> | undefined> {
  const c = client(user, password);
  await c.connect();
  try {
    return (await c.query(sql)).rows[0];
  } finally {
    await c.end();
  }
}

const hex = (n: number) => randomBytes(n).toString('hex');

describe(`password-checking PostgreSQL (${server.source}, ${server.host}:${server.port})`, () => {
  const role = `kt_fixture_${hex(4)}`;
  const rolePassword = hex(16);

  afterAll(async () => {
    const c = client(server.adminUser, server.adminPassword);
    await c.connect();
    try {
      await c.query(`DROP ROLE IF EXISTS ${c.escapeIdentifier(role)}`);
    } finally {
      await c.end();
    }
  });

  it('admin password logs in over TCP and SELECT 1 works', async () => {
    const row = await queryAs(server.adminUser, server.adminPassword, 'SELECT 1 AS one, current_user AS who');
    expect(row).toEqual({ one: 1, who: server.adminUser });
  });

  it('wrong admin password fails with 28P01', async () => {
    await expect(queryAs(server.adminUser, `${server.adminPassword}x`, 'SELECT 1')).rejects.toMatchObject({
      code: '28P01',
    });
  });

  it('a role created with a password logs in with it, and not with another', async () => {
    const admin = client(server.adminUser, server.adminPassword);
    await admin.connect();
    try {
      await admin.query(
        `CREATE ROLE ${admin.escapeIdentifier(role)} LOGIN PASSWORD ${admin.escapeLiteral(rolePassword)}`,
      );
    } finally {
      await admin.end();
    }

    const row = await queryAs(role, rolePassword, 'SELECT current_user AS who');
    expect(row).toEqual({ who: role });

    await expect(queryAs(role, hex(16), 'SELECT 1')).rejects.toMatchObject({ code: '28P01' });
  });
});
