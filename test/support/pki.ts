// Test certificates made by the openssl CLI: a CA, a server certificate for 127.0.0.1 and client certificates (one
// from a foreign CA), for the TLS tests (HTTPS, mTLS, LDAPS).
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface Pki {
  dir: string;
  caCert: string;
  serverCert: string;
  serverKey: string;
  /** Paths of the client certificate and key (also read into `client`). */
  clientCert: string;
  clientKey: string;
  client: { cert: Buffer; key: Buffer };
  foreignClient: { cert: Buffer; key: Buffer };
  ca: Buffer;
}

/** The certificates in `dir` (a new temporary directory unless given). */
export function makePki(dir = mkdtempSync(join(tmpdir(), 'kt-tls-'))): Pki {
  const at = (name: string) => join(dir, name);
  const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const makeCa = (name: string, cn: string) =>
    openssl(
      'req',
      '-x509',
      ...ec,
      '-keyout',
      at(`${name}.key`),
      '-out',
      at(`${name}.crt`),
      '-days',
      '2',
      '-subj',
      `/CN=${cn}`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    );
  const makeLeaf = (name: string, cn: string, ca: string, extensions: string) => {
    openssl(
      'req',
      '-new',
      ...ec,
      '-keyout',
      at(`${name}.key`),
      '-out',
      at(`${name}.csr`),
      '-subj',
      `/CN=${cn}`,
    );
    writeFileSync(at(`${name}.ext`), extensions);
    openssl(
      'x509',
      '-req',
      '-in',
      at(`${name}.csr`),
      '-CA',
      at(`${ca}.crt`),
      '-CAkey',
      at(`${ca}.key`),
      '-set_serial',
      `0x${randomBytes(8).toString('hex')}`,
      '-days',
      '2',
      '-extfile',
      at(`${name}.ext`),
      '-out',
      at(`${name}.crt`),
    );
  };
  makeCa('ca', 'Keyturn Test CA');
  makeCa('foreign-ca', 'Some Other CA');
  makeLeaf(
    'server',
    '127.0.0.1',
    'ca',
    'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n',
  );
  const clientExt = 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n';
  makeLeaf('client', 'payments-worker', 'ca', clientExt);
  makeLeaf('foreign-client', 'payments-worker', 'foreign-ca', clientExt);
  const read = (name: string) => readFileSync(at(name));
  return {
    dir,
    caCert: at('ca.crt'),
    serverCert: at('server.crt'),
    serverKey: at('server.key'),
    clientCert: at('client.crt'),
    clientKey: at('client.key'),
    ca: read('ca.crt'),
    client: { cert: read('client.crt'), key: read('client.key') },
    foreignClient: { cert: read('foreign-client.crt'), key: read('foreign-client.key') },
  };
}
