// The MySQL/MariaDB server the tests use: KEYTURN_TEST_MYSQL_URL (mysql://user:pass@host:port), else the
// machine's MariaDB as root with no password on 127.0.0.1:3306.
import mysql from 'mysql2/promise';

export const MYSQL_SERVER = (() => {
  const raw = process.env.KEYTURN_TEST_MYSQL_URL;
  if (!raw) return { host: '127.0.0.1', port: 3306, user: 'root', password: '' };
  const url = new URL(raw);
  return {
    host: url.hostname,
    port: Number(url.port || 3306),
    user: decodeURIComponent(url.username || 'root'),
    password: decodeURIComponent(url.password),
  };
})();

export async function asMysqlRoot<T>(fn: (c: mysql.Connection) => Promise<T>): Promise<T> {
  const c = await mysql.createConnection({ ...MYSQL_SERVER, connectTimeout: 3000 });
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

/**
 * Logs in and runs SELECT 1: true on success, false when the server refuses the password (1045, or 1698, which
 * MariaDB answers now and then for an account that does not exist).
 */
export async function mysqlCanLogin(user: string, password: string, database: string): Promise<boolean> {
  let c: mysql.Connection | undefined;
  try {
    c = await mysql.createConnection({
      host: MYSQL_SERVER.host,
      port: MYSQL_SERVER.port,
      user,
      password,
      database,
      connectTimeout: 5000,
    });
    await c.query('SELECT 1');
    return true;
  } catch (err) {
    const errno = (err as { errno?: number }).errno;
    if (errno === 1045 || errno === 1698) return false;
    throw err;
  } finally {
    await c?.end().catch(() => {});
  }
}
