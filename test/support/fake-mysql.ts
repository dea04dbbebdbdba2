/**
 * Test fixture: an impostor MySQL server on loopback, as an attacker would stand up at a connection's address.
 * It greets like MySQL 8 (HandshakeV10 naming an authentication plugin, optionally offering TLS), reads the client's
 * HandshakeResponse41, then asks for the authentication step that hands it the password:
 *   - `mysql_clear_password`: an AuthSwitchRequest to it; the answer is the password;
 *   - `sha256_password`: an AuthSwitchRequest to it; over plain TCP the client asks for the server's RSA public key
 *     (0x01), gets the fake's own and sends the password encrypted to it, which the fake decrypts; in TLS the
 *     answer is the password;
 *   - `caching_sha2_password`: an AuthSwitchRequest to it (unless the client already answered with it), then, after
 *     the scramble, AuthMoreData 0x04 "perform full authentication"; then as for sha256_password (key request 0x02).
 * A client that answers the greeting with the asked method directly (mysql2 does so for sha256_password and
 * mysql_clear_password in TLS) is read the same way. Every password ends in an ERR packet (1045).
 *
 * `passwordsReceived` is what a real attack would have captured: clear passwords and decrypted RSA payloads.
 * Users in `letIn` get an OK packet after their HandshakeResponse (their scramble unchecked), users in `cached` after
 * caching_sha2_password's fast path (MySQL 8's usual login), and have every query answered with one row of one value
 * (VERSION() → `version`), so that a driver can open a session as them.
 */
import { execFileSync } from 'node:child_process';
import { constants, generateKeyPairSync, privateDecrypt, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';

export type FakeMysqlAsk = 'mysql_clear_password' | 'sha256_password' | 'caching_sha2_password';

export interface FakeMysqlOptions {
  ask: FakeMysqlAsk;
  /** The plugin the greeting names (default: the asked one). */
  greeting?: string;
  /** User names let in at once, whose queries are answered. */
  letIn?: string[];
  /** With `caching_sha2_password`: user names whose scramble the fake takes (the fast path, as for an account in
   * MySQL's cache), and lets in. */
  cached?: string[];
  /** A key and certificate (PEM): the greeting offers TLS. */
  tls?: { key: string; cert: string };
  version?: string;
}

export interface FakeMysql {
  port: number;
  /** Logins the fake asked for the password-sending step. */
  readonly asked: number;
  /** Passwords captured: clear ones and decrypted RSA payloads. */
  readonly passwordsReceived: string[];
  /** Requests for the server's RSA public key (the step before an encrypted password). */
  readonly keyRequests: number;
  /** Packets the clients sent after the fake asked for the password-sending step. */
  readonly answersToAsk: Buffer[];
  /** Every byte the clients sent (inside TLS where it was used). */
  received(): Buffer;
  close(): Promise<void>;
}

// Capability flags (MySQL's CLIENT_*).
const LONG_PASSWORD = 0x1;
const FOUND_ROWS = 0x2;
const LONG_FLAG = 0x4;
const CONNECT_WITH_DB = 0x8;
const PROTOCOL_41 = 0x200;
const SSL = 0x800;
const TRANSACTIONS = 0x2000;
const SECURE_CONNECTION = 0x8000;
const MULTI_RESULTS = 0x20000;
const PLUGIN_AUTH = 0x80000;
const CONNECT_ATTRS = 0x100000;
const PLUGIN_AUTH_LENENC_CLIENT_DATA = 0x200000;

function packet(seq: number, payload: Buffer): Buffer {
  const header = Buffer.alloc(4);
  header.writeUIntLE(payload.length, 0, 3);
  header[3] = seq & 0xff;
  return Buffer.concat([header, payload]);
}

function lenencInt(n: number): Buffer {
  if (n < 251) return Buffer.from([n]);
  const b = Buffer.alloc(3);
  b[0] = 0xfc;
  b.writeUInt16LE(n, 1);
  return b;
}

function lenencString(s: string | Buffer): Buffer {
  const b = typeof s === 'string' ? Buffer.from(s) : s;
  return Buffer.concat([lenencInt(b.length), b]);
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(n);
  return b;
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

const nul = (s: string) => Buffer.from(`${s}\0`);
const OK = Buffer.from([0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00]);
const EOF = Buffer.from([0xfe, 0x00, 0x00, 0x02, 0x00]);

function errPacket(errno: number, sqlState: string, message: string): Buffer {
  return Buffer.concat([Buffer.from([0xff]), u16(errno), Buffer.from(`#${sqlState}${message}`)]);
}

function greeting(version: string, plugin: string, scramble: Buffer, tls: boolean): Buffer {
  const caps =
    LONG_PASSWORD |
    FOUND_ROWS |
    LONG_FLAG |
    CONNECT_WITH_DB |
    PROTOCOL_41 |
    TRANSACTIONS |
    SECURE_CONNECTION |
    MULTI_RESULTS |
    PLUGIN_AUTH |
    CONNECT_ATTRS |
    PLUGIN_AUTH_LENENC_CLIENT_DATA |
    (tls ? SSL : 0);
  return Buffer.concat([
    Buffer.from([10]),
    nul(version),
    u32(42),
    scramble.subarray(0, 8),
    Buffer.from([0]),
    u16(caps & 0xffff),
    Buffer.from([33]),
    u16(0x0002),
    u16(caps >>> 16),
    Buffer.from([21]),
    Buffer.alloc(10),
    scramble.subarray(8, 20),
    Buffer.from([0]),
    nul(plugin),
  ]);
}

interface HandshakeResponse {
  user: string;
  authData: Buffer;
  plugin: string;
}

function readNul(buf: Buffer, at: number): [string, number] {
  const end = buf.indexOf(0, at);
  const stop = end < 0 ? buf.length : end;
  return [buf.subarray(at, stop).toString('utf8'), stop + 1];
}

function parseHandshakeResponse(payload: Buffer): HandshakeResponse {
  const caps = payload.readUInt32LE(0);
  let at = 32;
  const [user, afterUser] = readNul(payload, at);
  at = afterUser;
  let authData: Buffer;
  if (caps & PLUGIN_AUTH_LENENC_CLIENT_DATA || caps & SECURE_CONNECTION) {
    const length = payload[at] as number; // short answers only (< 251 bytes)
    authData = payload.subarray(at + 1, at + 1 + length);
    at += 1 + length;
  } else {
    const [text, next] = readNul(payload, at);
    authData = Buffer.from(text);
    at = next;
  }
  if (caps & CONNECT_WITH_DB) [, at] = readNul(payload, at);
  const [plugin] = caps & PLUGIN_AUTH ? readNul(payload, at) : [''];
  return { user, authData, plugin };
}

/** A password sent in clear: the bytes up to the terminating NUL. */
const clearPassword = (data: Buffer) => data.toString('utf8').replace(/\0$/, '');

export async function startFakeMysql(options: FakeMysqlOptions): Promise<FakeMysql> {
  const { ask } = options;
  const version = options.version ?? '8.0.36-impostor';
  const letIn = new Set(options.letIn ?? []);
  const cached = new Set(options.cached ?? []);
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const publicKey = rsa.publicKey.export({ type: 'spki', format: 'pem' });
  const passwordsReceived: string[] = [];
  const answersToAsk: Buffer[] = [];
  const received: Buffer[] = [];
  let asked = 0;
  let keyRequests = 0;
  const sockets = new Set<Socket>();

  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    let write = (b: Buffer): void => {
      socket.write(b);
    };
    let end = (b: Buffer): void => {
      socket.end(b);
    };
    let buffer = Buffer.alloc(0);
    let secure = false;
    let tlsInput: Duplex | undefined;
    let scramble = randomBytes(20);
    // handshake → (auth steps) → command
    let state: 'handshake' | 'switched' | 'full' | 'encrypted' | 'command' | 'done' = 'handshake';
    let seq = 0;
    // Set once the fake has asked for the step that sends the password: what follows is recorded.
    let asking = false;
    let user = '';
    const send = (payload: Buffer) => write(packet(++seq, payload));
    const deny = (password?: string) => {
      if (password !== undefined) passwordsReceived.push(password);
      state = 'done';
      end(packet(++seq, errPacket(1045, '28000', 'Access denied')));
    };
    const sendKey = () => {
      keyRequests += 1;
      send(Buffer.concat([Buffer.from([0x01]), Buffer.from(publicKey)]));
      state = 'encrypted';
    };
    const askFullAuthentication = () => {
      if (cached.has(user)) {
        send(Buffer.from([0x01, 0x03])); // fast authentication done
        send(OK);
        state = 'command';
        return;
      }
      asked += 1;
      asking = true;
      send(Buffer.from([0x01, 0x04])); // the scramble received: perform full authentication
      state = 'full';
    };
    const askFor = (response: HandshakeResponse) => {
      if (response.plugin === ask && ask !== 'caching_sha2_password') {
        // The client answered the greeting with the asked method itself: the answer is the password.
        asked += 1;
        answersToAsk.push(response.authData);
        deny(clearPassword(response.authData));
        return;
      }
      if (response.plugin === 'caching_sha2_password' && ask === 'caching_sha2_password') {
        askFullAuthentication(); // the answer was caching_sha2's scramble, made with the greeting's
        return;
      }
      scramble = randomBytes(20);
      if (ask !== 'caching_sha2_password') {
        asked += 1;
        asking = true;
      }
      send(Buffer.concat([Buffer.from([0xfe]), nul(ask), scramble, Buffer.from([0])]));
      state = 'switched';
    };

    const onPacket = (packetSeq: number, payload: Buffer): boolean => {
      seq = packetSeq;
      if (state === 'handshake') {
        if (payload.length === 32 && payload.readUInt32LE(0) & SSL && options.tls) {
          startTls();
          return false;
        }
        const response = parseHandshakeResponse(payload);
        user = response.user;
        if (letIn.has(response.user)) {
          send(OK);
          state = 'command';
        } else {
          askFor(response);
        }
        return true;
      }
      if (state === 'command') {
        seq = 0;
        const command = payload[0];
        if (command === 0x01) {
          state = 'done';
          socket.end();
          return false;
        }
        if (command !== 0x03) {
          send(OK);
          return true;
        }
        const sql = payload.subarray(1).toString('utf8');
        const value = /VERSION\(\)/i.test(sql) ? version : /sql_mode/i.test(sql) ? '' : '1';
        const column = Buffer.concat([
          lenencString('def'),
          lenencString(''),
          lenencString(''),
          lenencString(''),
          lenencString('v'),
          lenencString(''),
          Buffer.from([0x0c]),
          u16(33),
          u32(255),
          Buffer.from([0xfd]),
          u16(0),
          Buffer.from([0, 0, 0]),
        ]);
        for (const p of [Buffer.from([1]), column, EOF, lenencString(value), EOF]) send(p);
        return true;
      }
      if (state === 'done') return true;
      if (asking) answersToAsk.push(Buffer.from(payload));
      if (state === 'switched') {
        if (ask === 'mysql_clear_password') deny(clearPassword(payload));
        else if (ask === 'sha256_password') {
          if (payload.length === 1 && payload[0] === 0x01) sendKey();
          else deny(clearPassword(payload));
        } else {
          askFullAuthentication();
        }
        return true;
      }
      if (state === 'full') {
        if (payload.length === 1 && payload[0] === 0x02) sendKey();
        else deny(clearPassword(payload));
        return true;
      }
      // state 'encrypted': the password, xor the scramble, under the fake's RSA key.
      const stage1 = privateDecrypt(
        { key: rsa.privateKey, oaepHash: 'sha1', padding: constants.RSA_PKCS1_OAEP_PADDING },
        payload,
      );
      const clear = Buffer.from(stage1.map((byte, i) => byte ^ (scramble[i % scramble.length] as number)));
      deny(clearPassword(clear));
      return true;
    };

    const feed = (chunk: Buffer) => {
      received.push(Buffer.from(chunk));
      buffer = Buffer.concat([buffer, chunk]);
      while (buffer.length >= 4) {
        const length = buffer.readUIntLE(0, 3);
        if (buffer.length < 4 + length) return;
        const packetSeq = buffer[3] as number;
        const payload = buffer.subarray(4, 4 + length);
        buffer = buffer.subarray(4 + length);
        if (!onPacket(packetSeq, payload)) return;
      }
    };

    const startTls = () => {
      // Whatever followed the SSLRequest is the client's TLS hello: it goes to the TLS layer, not the parser.
      const rest = buffer;
      buffer = Buffer.alloc(0);
      secure = true;
      const input = new Duplex({
        read() {},
        write(chunk, _encoding, done) {
          socket.write(chunk, done);
        },
      });
      tlsInput = input;
      const tls = new TLSSocket(input as unknown as Socket, {
        isServer: true,
        key: options.tls?.key,
        cert: options.tls?.cert,
      });
      tls.on('error', () => socket.destroy());
      tls.on('data', (chunk: Buffer) => feed(chunk));
      write = (b) => {
        tls.write(b);
      };
      end = (b) => {
        tls.end(b);
        socket.end();
      };
      if (rest.length > 0) input.push(rest);
    };

    socket.on('data', (chunk: Buffer) => {
      if (secure) tlsInput?.push(chunk);
      else feed(chunk);
    });
    write(packet(0, greeting(version, options.greeting ?? ask, scramble, options.tls !== undefined)));
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('fake MySQL has no port');
  return {
    port: address.port,
    get asked() {
      return asked;
    },
    get keyRequests() {
      return keyRequests;
    },
    passwordsReceived,
    answersToAsk,
    received: () => Buffer.concat(received),
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((done) => server.close(() => done()));
    },
  };
}

/**
 * A self-signed certificate for 127.0.0.1 and localhost, or what `subjectAltName` says (openssl), for a fake that offers TLS; `missing` says why when openssl
 * cannot make one.
 */
export function selfSignedCertificate(
  subjectAltName = 'IP:127.0.0.1,DNS:localhost',
): { key: string; cert: string } | { missing: string } {
  const dir = mkdtempSync(join(tmpdir(), 'kt-fake-mysql-'));
  try {
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-days',
        '1',
        '-subj',
        '/CN=127.0.0.1',
        '-addext',
        `subjectAltName=${subjectAltName}`,
        '-keyout',
        join(dir, 'key.pem'),
        '-out',
        join(dir, 'cert.pem'),
      ],
      { stdio: 'ignore' },
    );
    return {
      key: readFileSync(join(dir, 'key.pem'), 'utf8'),
      cert: readFileSync(join(dir, 'cert.pem'), 'utf8'),
    };
  } catch (err) {
    return { missing: `openssl could not make a certificate (${(err as Error).message.split('\n')[0]})` };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
