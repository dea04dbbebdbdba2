// One pino logger for the whole process. Redaction is the second line of defence (the first is never passing a
// secret to a log call): any field with a secret-bearing name is censored at any depth pino can address.

import pino, { type Logger, type LoggerOptions } from 'pino';
import { scrubJsonLine } from '../crypto/secret-scope.ts';

const SECRET_FIELDS = [
  'password',
  'currentPassword',
  'adminPassword',
  'secret',
  'token',
  'adminToken',
  'masterKey',
  'authorization',
  'cookie',
  'apiKey',
  'privateKey',
  'signingKey',
  'secret_id',
  'client_token',
  'sessionToken',
  'secretAccessKey',
  'clientSecret',
  'accessToken',
  'refreshToken',
  'idToken',
  'jwt',
  'tlsKey',
];

/** Paths for pino's redact option: the field itself and the same field one and two levels down. */
export const REDACT_PATHS: string[] = [
  ...SECRET_FIELDS,
  ...SECRET_FIELDS.map((f) => `*.${f}`),
  ...SECRET_FIELDS.map((f) => `*.*.${f}`),
  'req.headers.authorization',
  'req.headers["x-vault-token"]',
  'req.headers.cookie',
  'req.headers["x-keyturn-signature"]',
  'req.headers["proxy-authorization"]',
];

export interface LoggerSettings {
  level: LoggerOptions['level'];
  format: 'json' | 'pretty';
  /** Test hook: write lines here instead of stdout. */
  destination?: pino.DestinationStream;
}

export function createLogger(settings: LoggerSettings): Logger {
  const options: LoggerOptions = {
    level: settings.level ?? 'info',
    base: { service: 'keyturn' },
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    serializers: { err: pino.stdSerializers.err },
    timestamp: pino.stdTimeFunctions.isoTime,
    // Whatever a line carries, the secrets the current operation touched are cut out of it (finding 10, issue 11).
    hooks: { streamWrite: scrubJsonLine },
  };
  if (settings.destination) return pino(options, settings.destination);
  if (settings.format === 'pretty') {
    return pino({
      ...options,
      transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'SYS:HH:MM:ss.l' } },
    });
  }
  return pino(options);
}

export type { Logger };
