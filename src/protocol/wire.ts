/**
 * The wire constants of the protocol: route paths, subprotocol names, frame type names, error,
 * close and resync codes. This module imports nothing, so that the server (plugin, schemas,
 * errors) and the dependency-free client (`mesh-subscriptions/client`) share one definition.
 * PROTOCOL.md documents the same names and tables.
 */

/** The default route prefix of the plugin and of the client. */
export const DEFAULT_PREFIX = '/api/v1';
/** The WebSocket route, under the prefix. */
export const SUBSCRIBE_PATH = '/mesh/tasks/subscribe';
/** The route that mints single-use tickets, under the prefix. */
export const TICKETS_PATH = '/mesh/tickets';

/** The REST history of one task's output and of its updates, under the prefix (`:taskId` a UUID). */
export const OUTPUT_HISTORY_PATH = '/mesh/tasks/:taskId/output';
export const UPDATES_HISTORY_PATH = '/mesh/tasks/:taskId/updates';

/** `since` value that asks for a task's whole retained stream (`subscribe`, `subscribeOutput`). */
export const HISTORY_START = 'start';

/** The subprotocol every client that offers subprotocols must offer; the server selects it. */
export const MESH_PROTOCOL = 'mesh.v1';
/** A ticket travels as the subprotocol `mesh.ticket.<ticket>`. */
export const TICKET_PROTOCOL_PREFIX = 'mesh.ticket.';

/** `type` of the frames a client sends. */
export const CLIENT_FRAME_TYPES = [
  'subscribe',
  'unsubscribe',
  'subscribeAll',
  'unsubscribeAll',
  'subscribeOutput',
  'unsubscribeOutput',
] as const;
export type ClientFrameType = (typeof CLIENT_FRAME_TYPES)[number];

/** The subscribing frames: the kinds of subscription. */
export const SUBSCRIPTION_KINDS = ['subscribe', 'subscribeAll', 'subscribeOutput'] as const;
export type SubscriptionKind = (typeof SUBSCRIPTION_KINDS)[number];

/** The frame that ends each kind of subscription. */
export const UNSUBSCRIBE_FRAME = {
  subscribe: 'unsubscribe',
  subscribeAll: 'unsubscribeAll',
  subscribeOutput: 'unsubscribeOutput',
} as const satisfies Record<SubscriptionKind, ClientFrameType>;

/** The ack the server answers each client frame with (when it does not answer `error`). */
export const ACK_OF = {
  subscribe: 'subscribed',
  unsubscribe: 'unsubscribed',
  subscribeAll: 'subscribedAll',
  unsubscribeAll: 'unsubscribedAll',
  subscribeOutput: 'outputSubscribed',
  unsubscribeOutput: 'outputUnsubscribed',
} as const satisfies Record<ClientFrameType, string>;

/** `type` of the acks, one per client frame. */
export const ACK_TYPES = [
  'subscribed',
  'unsubscribed',
  'subscribedAll',
  'unsubscribedAll',
  'outputSubscribed',
  'outputUnsubscribed',
] as const;
export type AckFrameType = (typeof ACK_TYPES)[number];

/** `type` of every frame the server sends. */
export const SERVER_FRAME_TYPES = [
  ...ACK_TYPES,
  'taskUpdated',
  'taskOutput',
  'lagged',
  'resyncRequired',
  'historyTruncated',
  'error',
] as const;
export type ServerFrameType = (typeof SERVER_FRAME_TYPES)[number];

/** Why a `since` could not be honoured (`reason` of a `resyncRequired` frame). */
export const RESYNC_REASONS = ['unknownCursor', 'expired', 'tooFarBehind', 'unavailable'] as const;
export type ResyncReason = (typeof RESYNC_REASONS)[number];

/**
 * Why a history from `"since":"start"` begins after the task's first event (`reason` of a
 * `historyTruncated` frame): retention pruned its older events, or more are retained than one
 * replay may send (`maxReplay`), so only the newest are.
 */
export const TRUNCATED_REASONS = ['retention', 'maxReplay'] as const;
export type TruncatedReason = (typeof TRUNCATED_REASONS)[number];

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

/** Answers of the REST history routes other than 200. Bodies are `{code, message}`. */
export const HistoryError = {
  INVALID_REQUEST: { status: 400, code: 'INVALID_REQUEST', message: 'the request does not match the route’s schema' },
  INVALID_CURSOR: { status: 400, code: 'INVALID_CURSOR', message: '`after` is not a cursor of this log' },
  NOT_FOUND: { status: 404, code: 'NOT_FOUND', message: 'task not found' },
  CURSOR_EXPIRED: {
    status: 410,
    code: 'CURSOR_EXPIRED',
    message: 'events after `after` were pruned; read the history again without `after`',
  },
  UNAVAILABLE: { status: 503, code: 'UNAVAILABLE', message: 'the event log could not be read right now; retry later' },
} as const;
