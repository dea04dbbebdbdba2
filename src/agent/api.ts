// The agent's connection to Keyturn: the client's (src/client/connection.ts), with the bearer token read from its
// file at each request (a Kubernetes projected service-account token is replaced on disk before it expires) and the
// CA and client certificate read from the configured files.
import { readFile } from 'node:fs/promises';
import {
  KeyturnApiError,
  type KeyturnConnection,
  openConnection,
  type SecretRead,
} from '../client/connection.ts';
import type { AgentConfig } from './config.ts';

export { KeyturnApiError as AgentApiError, type KeyturnConnection, type SecretRead };

/** `onToken` sees each token read from the token file (the log scrubber keeps it). */
export async function connect(
  config: AgentConfig,
  onToken: (token: string) => void = () => {},
): Promise<KeyturnConnection> {
  const readOptional = async (path: string | undefined, what: string) => {
    if (!path) return undefined;
    try {
      return await readFile(path);
    } catch (err) {
      throw new KeyturnApiError(
        0,
        'config',
        `${what} ${path} cannot be read (${(err as NodeJS.ErrnoException).code})`,
      );
    }
  };
  const ca = await readOptional(config.caFile, 'caFile');
  const cert = await readOptional(config.certFile, 'certFile');
  const key = await readOptional(config.keyFile, 'keyFile');
  const authWhat = config.auth.kind === 'jwt' ? 'jwtFile' : 'tokenFile';
  const bearer = async (): Promise<string> => {
    let token: string;
    try {
      token = (await readFile(config.auth.file, 'utf8')).trim();
    } catch (err) {
      throw new KeyturnApiError(
        0,
        'config',
        `${authWhat} ${config.auth.file} cannot be read (${(err as NodeJS.ErrnoException).code})`,
      );
    }
    if (!token || /\s/.test(token))
      throw new KeyturnApiError(0, 'config', `${authWhat} ${config.auth.file} does not hold one token`);
    onToken(token);
    return token;
  };
  return openConnection({
    url: config.url,
    bearer,
    authWhat: `the token in ${authWhat}`,
    unknownCredentialHint: 'check templates[].credential',
    ...(ca ? { ca } : {}),
    ...(cert ? { cert } : {}),
    ...(key ? { key } : {}),
  });
}
