// What a reload of the tokens file does to a running API (auth/tokens-watcher.ts notices the change and validates
// it): the authenticator judges the next request by the new file, the registry service checks reader reach against
// its bindings, event streams opened by a token that no longer lets its holder in (revoked, expired, or its roles or
// bindings changed) end, and the reload is an audit event, applied or refused. A stream opened by a token that then
// expires ends within EXPIRY_SWEEP_MS too.
import { hostname } from 'node:os';
import type { AuditEventInput, AuditLog } from '../audit/audit-log.ts';
import type { Authenticator } from '../auth/authenticator.ts';
import { JwtAuthenticator } from '../auth/jwt.ts';
import type { ReaderBinding } from '../auth/principal.ts';
import { administratorSources, readerBindings, type TokensFile } from '../auth/tokens-file.ts';
import type { ReloadOutcome, TokensWatcher } from '../auth/tokens-watcher.ts';
import type { EventHub } from '../events/event-hub.ts';
import type { Logger } from '../logging/logger.ts';

/** How often open event streams are checked against their principal's token (expiry). */
const EXPIRY_SWEEP_MS = 5000;

export interface TokensReloadOptions {
  watcher: TokensWatcher;
  authenticator: Authenticator;
  /** The JWT authenticator built for the file in force at start (kept while the issuers do not change). */
  jwt: JwtAuthenticator | undefined;
  /** The registry service's reader bindings: this very array is updated in place. */
  readerBindings: ReaderBinding[];
  audit: AuditLog;
  events: EventHub;
  logger: Logger;
  /** KEYTURN_ADMIN_TOKEN is set: a file without administrators leaves that one. */
  staticAdmin: boolean;
}

const list = (names: string[]): string | null => (names.length > 0 ? names.join(', ') : null);

export function startTokensReload(options: TokensReloadOptions): { close(): void } {
  const { watcher, authenticator, audit, events, logger } = options;
  const instance = `${hostname()}:${process.pid}`;
  let jwt = options.jwt;

  const endInvalidStreams = (reason: string): number =>
    events.size === 0 ? 0 : events.endStreams(reason, (principal) => !authenticator.stillValid(principal));

  const apply = (file: TokensFile, previous: TokensFile) => {
    // The JWKS fetched for unchanged issuers is kept; a changed issuer list gets a new authenticator.
    const nextJwt =
      JSON.stringify(file.jwt) === JSON.stringify(previous.jwt)
        ? jwt
        : file.jwt.length > 0
          ? new JwtAuthenticator(file.jwt)
          : undefined;
    const change = authenticator.replace(file, nextJwt);
    jwt = nextJwt;
    options.readerBindings.splice(0, options.readerBindings.length, ...readerBindings(file));
    const ended = endInvalidStreams('the token of this stream was revoked or changed in the tokens file');
    if (!options.staticAdmin && administratorSources(file).length === 0) {
      logger.warn(
        { file: watcher.path },
        'tokens file: no token, certificate or JWT rule of the new file grants admin, and KEYTURN_ADMIN_TOKEN is not set: nobody can administer this Keyturn until one does',
      );
    }
    return { ...change, ...(ended > 0 ? { streamsEnded: ended } : {}) };
  };

  const onReload = (outcome: ReloadOutcome) => {
    const event: AuditEventInput = outcome.ok
      ? {
          actor: 'system',
          action: 'auth.tokens_reloaded',
          outcome: 'success',
          details: {
            file: watcher.path,
            tokens: outcome.file.tokens.length,
            certificates: outcome.file.certificates.length,
            jwtIssuers: outcome.file.jwt.length,
            added: list((outcome.summary.added as string[] | undefined) ?? []),
            removed: list((outcome.summary.removed as string[] | undefined) ?? []),
            changed: list((outcome.summary.changed as string[] | undefined) ?? []),
            revoked: list((outcome.summary.revoked as string[] | undefined) ?? []),
            process: instance,
          },
        }
      : {
          actor: 'system',
          action: 'auth.tokens_reload_refused',
          outcome: 'failure',
          details: {
            file: watcher.path,
            reason: outcome.reason,
            inForceSince: outcome.inForceSince.toISOString(),
            process: instance,
          },
        };
    audit
      .append(event)
      .catch((err) =>
        logger.error({ err: { message: (err as Error).message } }, `could not audit ${event.action}`),
      );
  };

  watcher.start({ apply, onReload });
  const sweep = setInterval(() => {
    const ended = endInvalidStreams('the token of this stream expired');
    if (ended > 0) logger.info({ streams: ended }, 'ended event streams whose token expired');
  }, EXPIRY_SWEEP_MS);
  sweep.unref();
  return {
    close() {
      clearInterval(sweep);
      watcher.close();
    },
  };
}
