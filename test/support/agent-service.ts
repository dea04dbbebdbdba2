// A stand-in for a service that reads its database login from a file the agent renders: started with the file's
// path and a pid file, it logs in once at start and again on each SIGHUP (the agent's reload), with the file's
// content at that moment, and prints one JSON line per login: {event: "login", ok, version, user} or, on failure,
// {event: "login", ok: false, version, code}. Never the password. SIGTERM ends it.
//
// The file is an env file: PGUSER, PGPASSWORD, PGHOST, PGPORT, PGDATABASE, KEYTURN_VERSION.
import { readFileSync, writeFileSync } from 'node:fs';
import pg from 'pg';

const [file, pidFile] = process.argv.slice(2) as [string, string];

function parseEnvFile(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return out;
}

let queue = Promise.resolve();
function login(reason: string): void {
  queue = queue.then(async () => {
    const env = parseEnvFile(readFileSync(file, 'utf8'));
    const client = new pg.Client({
      host: env.PGHOST,
      port: Number(env.PGPORT),
      database: env.PGDATABASE,
      user: env.PGUSER,
      password: env.PGPASSWORD,
      connectionTimeoutMillis: 5000,
    });
    client.on('error', () => {});
    try {
      await client.connect();
      const { rows } = await client.query('SELECT current_user AS u');
      process.stdout.write(
        `${JSON.stringify({ event: 'login', reason, ok: true, version: env.KEYTURN_VERSION, user: rows[0].u })}\n`,
      );
    } catch (err) {
      process.stdout.write(
        `${JSON.stringify({ event: 'login', reason, ok: false, version: env.KEYTURN_VERSION, code: (err as { code?: string }).code ?? 'error' })}\n`,
      );
    } finally {
      await client.end().catch(() => {});
    }
  });
}

process.on('SIGHUP', () => login('SIGHUP'));
process.on('SIGTERM', () => {
  void queue.then(() => process.exit(0));
});
writeFileSync(pidFile, `${process.pid}\n`);
login('start');
setInterval(() => {}, 1 << 30);
