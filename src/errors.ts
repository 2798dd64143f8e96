/**
 * Every code a client can see, in one place: the `code` of an `error` frame, the WebSocket close
 * codes, the HTTP answers to a refused upgrade and those of the REST history routes. PROTOCOL.md
 * documents the same tables.
 */

// The codes themselves are wire constants, shared with the client: src/protocol/wire.ts.
import { CloseCode, ErrorCode, HistoryError, UpgradeError } from './protocol/wire.js';
export { CloseCode, ErrorCode, HistoryError, UpgradeError };

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

/** Seconds a refused client should wait, sent as `Retry-After` with the 503 answers. */
export const RETRY_AFTER_SECONDS = 5;

/**
 * The plugin's own errors. Each has a stable `code`; the message is for people and may change.
 */

/** Raised at registration when the plugin's options are unusable. */
export class MeshOptionsError extends TypeError {
  readonly code = 'INVALID_OPTIONS';
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
  readonly code = 'UNAVAILABLE';
  constructor(cause: unknown) {
    super('owner lookup unavailable', { cause });
    this.name = 'OwnerLookupUnavailableError';
  }
}

/**
 * Raised at start (`app.ready()`, `listen()`) when the database lacks what the plugin needs: its
 * own objects at the right version (run the migration the message names), the privileges on
 * them, or the tasks table and columns the options name. The message says what and how to fix it.
 */
export class MeshSchemaError extends Error {
  readonly code = 'SCHEMA_NOT_READY';
  constructor(message: string, options?: { cause?: unknown }) {
    super(`mesh-subscriptions: ${message}`, options);
    this.name = 'MeshSchemaError';
  }
}
