/**
 * Every code a client can see, in one place: the `code` of an `error` frame, the WebSocket close
 * codes, and the HTTP answers to a refused upgrade. PROTOCOL.md documents the same tables.
 */

/** `code` of an `{type: "error"}` frame. The socket stays open after each of these. */
export const ErrorCode = {
  /** Not JSON, not an object, unknown `type`, missing or malformed `taskId`, or a binary frame. */
  PARSE_ERROR: 'PARSE_ERROR',
  /** The task does not exist or is not the caller's: the two are deliberately indistinguishable. */
  NOT_FOUND: 'NOT_FOUND',
  /** The owner lookup could not reach the database in time; nothing was subscribed. Retry later. */
  UNAVAILABLE: 'UNAVAILABLE',
  /** Something failed on the server while handling this frame; nothing was subscribed. */
  INTERNAL_ERROR: 'INTERNAL_ERROR',
  /** More frames than the per-connection token bucket allows; this frame was ignored. */
  RATE_LIMITED: 'RATE_LIMITED',
  /** The connection already holds `maxSubscriptionsPerConnection` subscriptions; nothing was added. */
  TOO_MANY_SUBSCRIPTIONS: 'TOO_MANY_SUBSCRIPTIONS',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** WebSocket close codes the server sends. */
export const CloseCode = {
  /** The server is shutting down; reconnect (to another instance). */
  GOING_AWAY: 1001,
  /** Kept sending over the rate limit for `floodCloseAfterMs`. */
  POLICY_VIOLATION: 1008,
  /** A client frame larger than `maxPayload`. */
  MESSAGE_TOO_BIG: 1009,
  /** An unexpected condition on the server; the reason is generic on purpose. */
  INTERNAL_ERROR: 1011,
  /** The client read too slowly: over the hard buffer limit, or backed up for too long. Reconnect. */
  SLOW_CONSUMER: 4008,
  /** The credentials of this socket are no longer valid (revoked or expired). Do not retry with them. */
  UNAUTHORIZED: 4401,
} as const;
export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];

/** One line per close code, for generated documents (the AsyncAPI file). */
export const CLOSE_CODE_MEANING: Record<keyof typeof CloseCode, string> = {
  GOING_AWAY: 'The server is shutting down; reconnect (to another instance).',
  POLICY_VIOLATION: 'Kept sending over the rate limit.',
  MESSAGE_TOO_BIG: 'A client frame larger than the server allows.',
  INTERNAL_ERROR: 'An unexpected condition on the server.',
  SLOW_CONSUMER: 'The client read too slowly. Reconnect, with `since`.',
  UNAUTHORIZED: 'The credentials of this socket were revoked or expired. Do not retry with them.',
};

/** One line per error code, for generated documents. */
export const ERROR_CODE_MEANING: Record<ErrorCode, string> = {
  PARSE_ERROR: 'Not JSON, not an object, unknown `type`, malformed `taskId` or `since`, or a binary frame.',
  NOT_FOUND: 'The task does not exist or is not the caller’s (deliberately indistinguishable).',
  UNAVAILABLE: 'Ownership could not be checked in time; nothing was subscribed. Retry later.',
  INTERNAL_ERROR: 'Something failed on the server while handling this frame.',
  RATE_LIMITED: 'Over the per-connection frame rate; this frame was ignored.',
  TOO_MANY_SUBSCRIPTIONS: 'The connection holds the most subscriptions it may; nothing was added.',
};

/** HTTP answers to the upgrade request, before any 101. Bodies are `{code, message}`. */
export const UpgradeError = {
  UNAUTHORIZED: { status: 401, code: 'UNAUTHORIZED', message: 'missing or invalid credentials' },
  ORIGIN_NOT_ALLOWED: { status: 403, code: 'ORIGIN_NOT_ALLOWED', message: 'this Origin may not open a socket here' },
  UPGRADE_REQUIRED: {
    status: 426,
    code: 'UPGRADE_REQUIRED',
    message: 'this endpoint speaks WebSocket only; send an Upgrade: websocket request',
  },
  TOO_MANY_CONNECTIONS: {
    status: 429,
    code: 'TOO_MANY_CONNECTIONS',
    message: 'this principal has too many open sockets; close one first',
  },
  SERVER_BUSY: { status: 503, code: 'SERVER_BUSY', message: 'the server is at its connection limit; retry later' },
  SHUTTING_DOWN: { status: 503, code: 'SHUTTING_DOWN', message: 'the server is shutting down; retry on another instance' },
  /** `authenticate` threw (its store is down): not a verdict on the credentials, so retry. */
  UNAVAILABLE: { status: 503, code: 'UNAVAILABLE', message: 'credentials could not be checked right now; retry later' },
} as const;

/** Seconds a refused client should wait, sent as `Retry-After` with the 503 answers. */
export const RETRY_AFTER_SECONDS = 5;

/** Raised at registration when the plugin's options are unusable. */
export class MeshOptionsError extends TypeError {
  constructor(message: string) {
    super(`mesh-subscriptions: ${message}`);
    this.name = 'MeshOptionsError';
  }
}

/** Raised by `publish` when a notification does not match its schema or its limits: bad input, never retried. */
export class MeshPublishError extends TypeError {
  readonly code = 'INVALID_EVENT';
  constructor(message: string) {
    super(`mesh-subscriptions: invalid notification: ${message}`);
    this.name = 'MeshPublishError';
  }
}

/**
 * Raised by `publish` when the event log cannot be written in time (the database is out of reach
 * or slower than `publishTimeoutMs`): an outage, never bad input. Not published; retry later.
 */
export class MeshBusUnavailableError extends Error {
  readonly code = 'UNAVAILABLE';
  constructor(cause: unknown) {
    super(`mesh-subscriptions: the event log could not be written; the event was not published`, { cause });
    this.name = 'MeshBusUnavailableError';
  }
}

/** The owner directory could not answer (database down, timeout). */
export class OwnerLookupUnavailableError extends Error {
  constructor(cause: unknown) {
    super('owner lookup unavailable', { cause });
    this.name = 'OwnerLookupUnavailableError';
  }
}
