// An example service for Keyturn's webhook target, on node:http alone (docs/webhook-target.md embeds this file
// verbatim, and a test keeps the two identical). It checks the signature in constant time, refuses stale
// timestamps and replayed request ids, and keeps scrypt hashes, never passwords. `requests`, `rejected` and
// `faults` exist for Keyturn's tests; a real service logs instead (never the body: it holds a password).
import { createHmac, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { promisify } from 'node:util';

const hashOf = promisify(scrypt) as (password: string, salt: Buffer, length: number) => Promise<Buffer>;
const WINDOW_S = 300; // Keyturn's timestamp must be within 5 minutes of our clock
const ACTIONS = ['set', 'test', 'revoke'];

export async function startWebhookServer(options: { signingKey: string; keyId: string; basePath?: string }) {
  const basePath = options.basePath ?? '/keyturn';
  const users = new Map<string, { salt: Buffer; hash: Buffer }>();
  const seen = new Map<string, number>(); // requestId → its timestamp, remembered for the replay window
  const requests: Array<{ action: string; username: string; requestId: string; status: number }> = [];
  const rejected: Array<{ status: number; reason: string }> = [];
  const faults: number[] = []; // statuses to answer to the next accepted requests instead of handling them

  const server = createServer(async (req, res) => {
    const reply = (status: number, body?: object) => {
      res.writeHead(status, { 'content-type': 'application/json' }).end(body ? JSON.stringify(body) : '');
    };
    const reject = (status: number, reason: string) => {
      rejected.push({ status, reason });
      reply(status, { error: reason });
    };
    try {
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const chunk of req) {
        size += chunk.length;
        if (size <= 65_536) chunks.push(chunk);
      }
      if (size > 65_536) return reject(413, 'body too large');
      const raw = Buffer.concat(chunks).toString('utf8');
      const action = req.url?.slice(basePath.length + 1) ?? '';
      if (req.method !== 'POST' || !req.url?.startsWith(`${basePath}/`) || !ACTIONS.includes(action))
        return reject(404, 'no such action');
      // 1. Signed by Keyturn? Compare in constant time, over the raw body exactly as it arrived.
      const timestamp = String(req.headers['x-keyturn-timestamp'] ?? '');
      const mac = createHmac('sha256', options.signingKey).update(`${timestamp}.${raw}`).digest('hex');
      const expected = Buffer.from(`v1=${mac}`);
      const given = Buffer.from(String(req.headers['x-keyturn-signature'] ?? ''));
      const keyOk = req.headers['x-keyturn-key-id'] === options.keyId;
      if (!keyOk || given.length !== expected.length || !timingSafeEqual(given, expected))
        return reject(401, 'bad signature');
      // 2. Fresh, and not seen before?
      const now = Date.now() / 1000;
      if (!/^\d{1,12}$/.test(timestamp) || Math.abs(now - Number(timestamp)) > WINDOW_S)
        return reject(401, 'stale timestamp');
      const body = JSON.parse(raw);
      if (body.action !== action || body.timestamp !== Number(timestamp) || typeof body.username !== 'string')
        return reject(400, 'malformed body');
      for (const [id, at] of seen) if (at < now - WINDOW_S) seen.delete(id);
      if (typeof body.requestId !== 'string' || seen.has(body.requestId)) return reject(409, 'replayed');
      seen.set(body.requestId, Number(timestamp));
      const answer = (status: number) => {
        requests.push({ action, username: body.username, requestId: body.requestId, status });
        reply(status, status === 200 ? { ok: true } : undefined);
      };
      const fault = faults.shift();
      if (fault) return answer(fault);
      // 3. The action. revoke takes no password; set and test need one.
      if (action === 'revoke') return answer(users.delete(body.username) ? 204 : 404);
      if (typeof body.password !== 'string' || body.password === '') return reject(400, 'password missing');
      if (action === 'set') {
        const salt = randomBytes(16);
        users.set(body.username, { salt, hash: await hashOf(body.password, salt, 32) });
        return answer(204);
      }
      const user = users.get(body.username);
      const hash = await hashOf(body.password, user?.salt ?? randomBytes(16), 32); // same work for unknown users
      return answer(user && timingSafeEqual(hash, user.hash) ? 200 : 403);
    } catch {
      return reject(400, 'malformed request');
    }
  });
  await new Promise<void>((listening) => server.listen(0, '127.0.0.1', listening));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    server,
    users,
    requests,
    rejected,
    faults,
    close: () => new Promise<void>((closed) => server.close(() => closed()).closeAllConnections()),
  };
}
