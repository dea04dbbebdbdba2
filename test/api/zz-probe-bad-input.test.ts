import { afterAll, beforeAll, it } from 'vitest';
import { dropPrefix, type Keyturn, startKeyturn, testEnv, registerPgConnection, createAppRole } from '../support/harness.ts';
const env = testEnv();
let kt: Keyturn;
beforeAll(async () => { kt = await startKeyturn(env, { components: ['api'] }); });
afterAll(async () => { await kt?.close(); await dropPrefix(env.prefix); });
async function raw(method: string, path: string, body?: string, headers: Record<string,string> = {}) {
  try {
    const res = await fetch(`${kt.url}${path}`, { method, headers: { authorization: `Bearer ${env.adminToken}`, ...headers }, ...(body === undefined ? {} : { body }) });
    return `${res.status} ${await res.text()}`;
  } catch (e) { return `THROW ${(e as Error).message} ${(e as any).cause?.message}`; }
}
it('probe', async () => {
  const conn = await registerPgConnection(kt, 'pgc');
  const role = await createAppRole();
  const J = { 'content-type': 'application/json' };
  const cases: [string, string, unknown?, Record<string,string>?][] = [
    ['GET', '/v1/connections/%ZZ'],
    ['GET', '/v1/connections/..%2F..'],
    ['GET', '/v1/connections/' + 'a'.repeat(300)],
    ['GET', '/v1/connections/a%20b'],
    ['GET', '/v1/audit?since=0000-01-01T00:00:00Z'],
    ['GET', '/v1/audit?since=2016-12-31T23:59:60Z'],
    ['GET', '/v1/audit?until=1960-01-01T00:00:00Z'],
    ['GET', '/v1/audit?cursor=99999999999999999999-0'],
    ['GET', '/v1/audit?cursor=18446744073709551615-18446744073709551615'],
    ['GET', '/v1/audit?limit=1&limit=2'],
    ['GET', '/v1/credentials?overdue='],
    ['GET', '/v1/credentials/x/rotations?before=1e400'],
    ['GET', '/v1/credentials/x/rotations?before=-1'],
    ['GET', '/v1/rotations/not-a-uuid'],
    ['GET', '/v1/rotations/00000000-0000-0000-0000-000000000000'],
    ['POST', '/v1/credentials', { id: 'c1', connection: conn, username: role.name, strategy: 'single-user', schedule: { every: '999999999d' } }],
    ['POST', '/v1/credentials', { id: 'c2', connection: conn, username: role.name, strategy: 'single-user', schedule: { cron: '0 0 31 2 *' } }],
    ['POST', '/v1/credentials', { id: 'c3', connection: conn, username: role.name, strategy: 'single-user', schedule: { cron: '61 * * * *' } }],
    ['POST', '/v1/credentials', { id: 'c4', connection: conn, username: role.name, strategy: 'single-user', schedule: { cron: '0 3 * * 1', timezone: 'Mars/Olympus' } }],
    ['POST', '/v1/credentials', { id: 'c5', connection: conn, username: role.name, strategy: 'single-user', schedule: { every: '0d' } }],
    ['POST', '/v1/credentials', { id: 'c6', connection: conn, username: role.name, strategy: 'single-user', schedule: { every: '10x' } }],
    ['POST', '/v1/credentials', { id: 'c7', connection: conn, username: role.name, strategy: 'single-user', schedule: { every: '1d' }, gracePeriod: '1h' }],
    ['POST', '/v1/credentials', { id: 'c8', connection: conn, username: role.name, strategy: 'single-user', schedule: { cron: 'L * * * * *' } }],
    ['POST', '/v1/credentials', { id: 'c9', connection: conn, username: role.name, strategy: 'single-user', schedule: { cron: '0 0 * * 1#5' } }],
    ['POST', '/v1/credentials', { id: 'c10', connection: conn, username: role.name, strategy: 'single-user', schedule: { every: '1d', window: '999999999d', jitter: '999999999d' } }],
    ['POST', '/v1/credentials', { id: 'c11', connection: 'nope', username: role.name, strategy: 'single-user', schedule: { every: '1d' } }],
    ['POST', '/v1/credentials', { id: 'c12', connection: conn, username: role.name, strategy: 'single-user', schedule: { every: '1d' }, store: {type: 'vault', mount: 'a', path: 'b'} }],
    ['POST', '/v1/connections', { id: 'k1', type: 'postgres', host: 'h', admin: { username: 'a', password: 'b', store: {type: 'aws', secretId: 'x'} } }],
    ['POST', '/v1/connections', { id: 'k2', type: 'mysql', host: 'h', admin: { username: 'a', password: 'b' } }],
    ['POST', '/v1/connections', { id: 'k3', type: 'postgres', host: 'h', port: '5432', admin: { username: 'a', password: 'b' } }],
    ['POST', '/v1/connections', { id: 'k4', type: 'postgres', host: 'h', admin: { username: 'a', password: 'b' }, labels: { '!bad': 'x' } }],
    ['POST', '/v1/connections', { id: 'k5', type: 'postgres', host: 'h', admin: { username: 'a', password: 'b' }, tls: { mode: 'x' } }],
    ['POST', '/v1/connections', { id: 'k6', type: 'postgres', host: 'h', admin: { username: 'a', password: 'b', extra: 1 } }],
    ['POST', '/v1/connections', { id: 'k7', type: 'postgres', host: 'h', admin: { username: 'a', password: 'b', store: {type: 'local', x: 1} } }],
    ['POST', '/v1/connections', '{"id":'],
    ['POST', '/v1/connections', '[]'],
    ['POST', '/v1/connections', '42'],
    ['POST', '/v1/connections', 'null'],
    ['POST', '/v1/connections', '{"__proto__":{"x":1}}'],
    ['POST', '/v1/connections', '{"constructor":{"prototype":{"x":1}}}'],
    ['POST', '/v1/connections', 'hello', { 'content-type': 'text/plain' }],
    ['POST', '/v1/connections', '<a/>', { 'content-type': 'application/xml' }],
    ['POST', '/v1/connections', '', J],
    ['POST', '/v1/connections', JSON.stringify({ id: 'big', pad: 'x'.repeat(70_000) })],
    ['POST', '/v1/connections', JSON.stringify({ id: 'big', pad: 'x'.repeat(2_000_000) })],
    ['POST', '/v1/credentials/nope/rotate', 'hello', { 'content-type': 'text/plain' }],
    ['POST', '/v1/credentials/nope/rotate', '{}'],
    ['POST', '/v1/credentials/nope/rotate'],
    ['POST', '/v1/credentials/nope/rotate', '[]'],
    ['GET', '/v1/credentials/nope/secret'],
    ['PATCH', '/v1/credentials/nope', {}],
    ['PATCH', '/v1/credentials/nope', { schedule: { every: '1d' } }],
    ['DELETE', `/v1/connections/${conn}`],
    ['GET', '/healthz?x=1'],
    ['GET', '/v1/nothing'],
    ['GET', '/v1/audit?foo=1'],
  ];
  for (const [m, p, b, h] of cases) {
    const body = b === undefined ? undefined : typeof b === 'string' ? b : JSON.stringify(b);
    const out = await raw(m, p, body, { ...(body !== undefined ? J : {}), ...(h ?? {}) });
    console.log(m, p.slice(0, 80), (body ?? '').slice(0, 120), '\n   =>', out.slice(0, 400));
  }
});
