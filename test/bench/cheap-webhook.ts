// The rotation bench's downstream, in a child process of its own: a service behind Keyturn's webhook contract
// (docs/webhook-target.md) that answers at once. It checks the HMAC signature and the timestamp as the contract
// says, and keeps a SHA-256 of each user's password (not scrypt, as the example service does: here the downstream
// is meant to cost next to nothing, so that the figure is Keyturn's). A user it never saw a `set` for has the
// password `initial-<username>`. Prints its port on stdout.
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

const signingKey = process.env.BENCH_SIGNING_KEY ?? '';
const keyId = process.env.BENCH_KEY_ID ?? '';
const users = new Map<string, Buffer>();
const sha = (text: string) => createHash('sha256').update(text).digest();

const server = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    const raw = Buffer.concat(chunks).toString('utf8');
    const timestamp = String(req.headers['x-keyturn-timestamp'] ?? '');
    const expected = Buffer.from(
      `v1=${createHmac('sha256', signingKey).update(`${timestamp}.${raw}`).digest('hex')}`,
    );
    const given = Buffer.from(String(req.headers['x-keyturn-signature'] ?? ''));
    if (
      req.headers['x-keyturn-key-id'] !== keyId ||
      given.length !== expected.length ||
      !timingSafeEqual(given, expected) ||
      Math.abs(Date.now() / 1000 - Number(timestamp)) > 300
    ) {
      res.writeHead(401).end();
      return;
    }
    const body = JSON.parse(raw) as { action: string; username: string; password?: string };
    if (body.action === 'set') {
      users.set(body.username, sha(body.password ?? ''));
      res.writeHead(204).end();
    } else if (body.action === 'test') {
      // A user never set has the password `initial-<username>` (the scale bench imports 100,000 of them).
      const known = users.get(body.username) ?? sha(`initial-${body.username}`);
      res.writeHead(timingSafeEqual(known, sha(body.password ?? '')) ? 200 : 401).end();
    } else if (body.action === 'revoke') {
      users.delete(body.username);
      res.writeHead(204).end();
    } else res.writeHead(404).end();
  });
});
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${(server.address() as AddressInfo).port}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
