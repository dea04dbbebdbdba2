// Errors the registry raises; the API maps each to its HTTP status (api/errors.ts).
export class NotFoundError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NotFoundError';
  }
}
export class ConflictError extends Error {
  /** The error code of the 409 answer: "conflict", or a more precise one (e.g. "clone_exists"). */
  readonly code: string;
  constructor(message: string, code = 'conflict') {
    super(message);
    this.name = 'ConflictError';
    this.code = code;
  }
}
/** Valid input that cannot be carried out (an unknown connection, a strategy the target cannot do…). */
export class UnprocessableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UnprocessableError';
  }
}
/** A downstream or store that the request needs did not answer: the same request may work shortly. */
export class UnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UnavailableError';
  }
}
/** The caller is known but this change needs a role it does not have (an operator repointing a connection…). */
export class ForbiddenError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ForbiddenError';
  }
}
/** The caller made too many attempts of some kind: retry after `retryAfterSeconds` (429 with Retry-After). */
export class TooManyRequestsError extends Error {
  readonly retryAfterSeconds: number;
  constructor(message: string, retryAfterSeconds: number) {
    super(message);
    this.name = 'TooManyRequestsError';
    this.retryAfterSeconds = retryAfterSeconds;
  }
}
