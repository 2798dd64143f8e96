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
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** WebSocket close codes the server sends. */
export const CloseCode = {
  /** The server is shutting down; reconnect (to another instance). */
  GOING_AWAY: 1001,
  /** A client frame larger than `maxPayload`. */
  MESSAGE_TOO_BIG: 1009,
  /** An unexpected condition on the server; the reason is generic on purpose. */
  INTERNAL_ERROR: 1011,
} as const;
export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];

/** HTTP answers to the upgrade request, before any 101. Bodies are `{code, message}`. */
export const UpgradeError = {
  UNAUTHORIZED: { status: 401, code: 'UNAUTHORIZED', message: 'missing or invalid credentials' },
  UPGRADE_REQUIRED: {
    status: 426,
    code: 'UPGRADE_REQUIRED',
    message: 'this endpoint speaks WebSocket only; send an Upgrade: websocket request',
  },
} as const;

/** Raised at registration when the plugin's options are unusable. */
export class MeshOptionsError extends TypeError {
  constructor(message: string) {
    super(`mesh-subscriptions: ${message}`);
    this.name = 'MeshOptionsError';
  }
}

/** Raised by `publish` when a notification does not match its schema. */
export class MeshPublishError extends TypeError {
  constructor(message: string) {
    super(`mesh-subscriptions: invalid notification: ${message}`);
    this.name = 'MeshPublishError';
  }
}

/** The owner directory could not answer (database down, timeout). */
export class OwnerLookupUnavailableError extends Error {
  constructor(cause: unknown) {
    super('owner lookup unavailable', { cause });
    this.name = 'OwnerLookupUnavailableError';
  }
}
