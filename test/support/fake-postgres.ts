/**
 * Test fixture: an impostor PostgreSQL server on loopback, as an attacker would stand up at a connection's address.
 * It answers the startup message by asking for a cleartext password (or md5, or SCRAM), records every byte the
 * client sends after the startup message, and answers each password with an ErrorResponse (28P01) whose message
 * echoes what it received — the way a hostile or careless downstream would put a password into an error.
 *
 * `passwordsReceived` is what a real attack would have captured: the PasswordMessage payloads ('p').
 */
import { createServer, type Server, type Socket } from 'node:net';

export type FakeAuth = 'password' | 'md5' | 'scram-sha-256' | 'none';

export interface FakePostgres {
  port: number;
  /** Connections that reached the point where the server asked for a password. */
  readonly asked: number;
  /** The payloads of every PasswordMessage ('p') received: cleartext passwords, md5 hashes, SASL responses. */
  readonly passwordsReceived: string[];
  /** The text of every statement received (simple 'Q' or extended 'P' protocol): with `auth: 'none'` (trust). */
  readonly statementsReceived: string[];
  close(): Promise<void>;
}

const AUTH_CODES: Record<Exclude<FakeAuth, 'none'>, Buffer> = {
  password: int32(3),
  md5: Buffer.concat([int32(5), Buffer.from([1, 2, 3, 4])]),
  'scram-sha-256': Buffer.concat([int32(10), Buffer.from('SCRAM-SHA-256\0\0')]),
};

function int32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
}

function message(type: string, body: Buffer): Buffer {
  return Buffer.concat([Buffer.from(type), int32(body.length + 4), body]);
}

function errorResponse(code: string, text: string): Buffer {
  const field = (tag: string, value: string) => Buffer.from(`${tag}${value}\0`);
  return message(
    'E',
    Buffer.concat([
      field('S', 'FATAL'),
      field('V', 'FATAL'),
      field('C', code),
      field('M', text),
      Buffer.from([0]),
    ]),
  );
}

export async function startFakePostgres(options: { auth?: FakeAuth } = {}): Promise<FakePostgres> {
  const auth = options.auth ?? 'password';
  const passwordsReceived: string[] = [];
  const statementsReceived: string[] = [];
  let asked = 0;
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    let buffer = Buffer.alloc(0);
    let started = false;
    socket.on('data', (chunk) => {
      buffer = Buffer.concat([buffer, chunk]);
      for (;;) {
        if (!started) {
          if (buffer.length < 8) return;
          const length = buffer.readInt32BE(0);
          if (buffer.length < length) return;
          const code = buffer.readInt32BE(4);
          buffer = buffer.subarray(length);
          if (code === 80877103 || code === 80877104) {
            socket.write('N'); // SSLRequest / GSSENCRequest: not here
            continue;
          }
          started = true;
          asked += 1;
          if (auth === 'none') {
            // Trust: AuthenticationOk at once, then ReadyForQuery; whatever comes next is a statement.
            socket.write(Buffer.concat([message('R', int32(0)), message('Z', Buffer.from('I'))]));
          } else {
            socket.write(message('R', AUTH_CODES[auth]));
          }
          continue;
        }
        if (buffer.length < 5) return;
        const type = String.fromCharCode(buffer[0] as number);
        const length = buffer.readInt32BE(1);
        if (buffer.length < length + 1) return;
        const body = buffer.subarray(5, length + 1);
        buffer = buffer.subarray(length + 1);
        if (type === 'p') {
          const text = body.toString('utf8').replace(/\0+$/, '');
          passwordsReceived.push(text);
          socket.end(errorResponse('28P01', `password authentication failed: got "${text}"`));
          return;
        }
        if (type === 'Q' || type === 'P') {
          statementsReceived.push(body.toString('utf8').replace(/\0/g, ' ').trim());
          socket.end(errorResponse('42501', 'not here'));
          return;
        }
        if (type === 'X') {
          socket.end();
          return;
        }
      }
    });
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('fake PostgreSQL has no port');
  return {
    port: address.port,
    get asked() {
      return asked;
    },
    passwordsReceived,
    statementsReceived,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((done) => server.close(() => done()));
    },
  };
}
