/**
 * The wire protocol of `GET /api/v1/mesh/tasks/subscribe` as TypeBox schemas: the one source of
 * truth for validation, for the TypeScript types, and for the documents generated from them.
 * The shapes are those of the Rust handler this project replaces (serde, `tag = "type"`,
 * camelCase); PROTOCOL.md explains each message.
 */
import { Type, type Static, type TLiteral, type TSchema } from '@sinclair/typebox';
import { RESYNC_REASONS, SUBSCRIPTION_KINDS, TRUNCATED_REASONS, type ClientFrameType, type ServerFrameType } from './wire.js';

/** One `Type.Literal` per name of a wire.ts list, in its order. */
const literals = <const T extends readonly string[]>(values: T) =>
  values.map((value) => Type.Literal(value)) as { -readonly [K in keyof T]: TLiteral<T[K]> };

/** A UUID in the hyphenated form, any letter case (what serde's `Uuid` accepts from the iOS app). */
export const UUID_PATTERN = '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$';
export const Uuid = Type.String({ pattern: UUID_PATTERN, description: 'A UUID, any letter case' });
/** The same check, for code outside a schema. */
export const UUID_REGEX = new RegExp(UUID_PATTERN);

const INT32 = { minimum: -2147483648, maximum: 2147483647 } as const;

// Client → server. Extra fields are allowed and ignored, as serde ignores them.

const withTaskId = <T extends string>(type: T, description: string) =>
  Type.Object({ type: Type.Literal(type), taskId: Uuid }, { $id: type, description });
const bare = <T extends string>(type: T, description: string) => Type.Object({ type: Type.Literal(type) }, { $id: type, description });

/** Where a stream resumes: the `cursor` of the last event the client has of it. */
export const Since = Type.Optional(
  Type.String({
    minLength: 1,
    maxLength: 128,
    description: 'Resume after this cursor: replay what this subscription would have delivered since, then go on live',
  }),
);

/** `subscribe` and `subscribeOutput` also take `"start"`: the task's whole retained stream, then live. */
export const TaskSince = Type.Optional(
  Type.String({
    minLength: 1,
    maxLength: 128,
    description: 'Resume after this cursor, or `"start"`: replay the task\'s whole retained stream (oldest first), then go on live',
  }),
);

export const ClientMessages = {
  subscribe: Type.Object(
    { type: Type.Literal('subscribe'), taskId: Uuid, since: TaskSince },
    { $id: 'subscribe', description: 'Receive `taskUpdated` for one task the caller may see.' },
  ),
  unsubscribe: withTaskId('unsubscribe', 'Stop receiving `taskUpdated` for one task.'),
  subscribeAll: Type.Object(
    { type: Type.Literal('subscribeAll'), since: Since },
    { $id: 'subscribeAll', description: 'Receive `taskUpdated` for every task the caller may see (admins: all tasks).' },
  ),
  unsubscribeAll: bare('unsubscribeAll', 'Stop the `subscribeAll` stream.'),
  subscribeOutput: Type.Object(
    { type: Type.Literal('subscribeOutput'), taskId: Uuid, since: TaskSince },
    { $id: 'subscribeOutput', description: 'Receive `taskOutput` (live transcript) of one task the caller may see.' },
  ),
  unsubscribeOutput: withTaskId('unsubscribeOutput', 'Stop receiving `taskOutput` for one task.'),
} as const satisfies Record<ClientFrameType, TSchema>;

export type ClientMessageType = keyof typeof ClientMessages;
export type ClientMessage = { [K in ClientMessageType]: Static<(typeof ClientMessages)[K]> }[ClientMessageType];

// Server → client.

const ack = <T extends string>(type: T, description: string) =>
  Type.Object({ type: Type.Literal(type), taskId: Uuid }, { $id: type, additionalProperties: false, description });
const bareAck = <T extends string>(type: T, description: string) =>
  Type.Object({ type: Type.Literal(type) }, { $id: type, additionalProperties: false, description });

/**
 * Statuses the example host and its dashboard use; the protocol takes any string. Offered to
 * editors by the types below, while every other string still type-checks (`string & {}` keeps the
 * union from collapsing into plain `string`).
 */
export type KnownTaskStatus = 'pending' | 'running' | 'done' | 'failed' | 'cancelled';
/** The `messageType`s of PROTOCOL.md ("taskOutput"); an open set. */
export type KnownMessageType = 'assistant' | 'tool_use' | 'tool_result' | 'result' | 'system' | 'error' | 'raw';
export type TaskStatus = KnownTaskStatus | (string & {});
export type MessageType = KnownMessageType | (string & {});

export const TaskUpdatedFields = {
  taskId: Uuid,
  version: Type.Integer({ ...INT32, description: 'The task version after the change' }),
  // Unsafe only widens the static type: the schema is the same plain string (its Kind included).
  status: Type.Unsafe<TaskStatus>(Type.String({ description: 'The task status after the change' })),
  updatedFields: Type.Array(Type.String(), { description: 'Names of the fields this change touched' }),
  updatedBy: Type.String({ description: 'Who made the change' }),
};

export const TaskOutputFields = {
  taskId: Uuid,
  messageType: Type.Unsafe<MessageType>(
    Type.String({
      description: 'assistant, tool_use, tool_result, result, system, error or raw (open set)',
    }),
  ),
  content: Type.String({ description: 'Main text content' }),
  toolName: Type.Optional(Type.String({ description: 'Tool name of a tool_use message' })),
  toolInput: Type.Optional(Type.Unknown({ description: 'Tool input (any JSON) of a tool_use message' })),
  isError: Type.Optional(Type.Boolean({ description: 'Whether a tool result was an error' })),
  costUsd: Type.Optional(Type.Number({ description: 'Cost in USD of a result message' })),
  durationMs: Type.Optional(Type.Integer({ description: 'Duration in ms of a result message' })),
  isPartial: Type.Boolean({ description: 'A partial message, to be replaced by a later one' }),
};

/** Not in the Rust server's frames: old clients ignore it; new ones resume with it (`since`). */
const Cursor = Type.String({ description: 'Opaque position of this event in its stream; pass it as `since` to resume after it' });

export const ServerMessages = {
  subscribed: ack('subscribed', 'Answers `subscribe`.'),
  unsubscribed: ack('unsubscribed', 'Answers `unsubscribe`.'),
  subscribedAll: bareAck('subscribedAll', 'Answers `subscribeAll`.'),
  unsubscribedAll: bareAck('unsubscribedAll', 'Answers `unsubscribeAll`.'),
  outputSubscribed: ack('outputSubscribed', 'Answers `subscribeOutput`.'),
  outputUnsubscribed: ack('outputUnsubscribed', 'Answers `unsubscribeOutput`.'),
  taskUpdated: Type.Object(
    { type: Type.Literal('taskUpdated'), ...TaskUpdatedFields, cursor: Cursor },
    { $id: 'taskUpdated', description: 'A task the client follows changed.' },
  ),
  taskOutput: Type.Object(
    { type: Type.Literal('taskOutput'), ...TaskOutputFields, cursor: Cursor },
    {
      $id: 'taskOutput',
      description: 'A piece of a task’s live output. Absent optional fields are left out, never null.',
    },
  ),
  lagged: Type.Object(
    {
      type: Type.Literal('lagged'),
      taskId: Uuid,
      skipped: Type.Integer({ minimum: 1, description: 'How many taskOutput frames of this task were dropped' }),
      cursor: Type.String({
        description:
          'The cursor of the last output of this task the client got before the gap: `subscribeOutput` with it as `since` fills the gap',
      }),
    },
    {
      $id: 'lagged',
      additionalProperties: false,
      description: 'The client read too slowly and missed output of this task; resume from `cursor`, or refetch.',
    },
  ),
  resyncRequired: Type.Object(
    {
      type: Type.Literal('resyncRequired'),
      subscription: Type.Union(literals(SUBSCRIPTION_KINDS), {
        description: 'The subscription whose `since` could not be honoured; it is live from now on',
      }),
      taskId: Type.Optional(Type.String({ description: 'Its task, for `subscribe` and `subscribeOutput`' })),
      reason: Type.Union(literals(RESYNC_REASONS), {
        description:
          'unknownCursor: not a cursor of this log; expired: the log no longer reaches back that far; tooFarBehind: more to replay than the server replays at once; unavailable: the log could not be read just now',
      }),
    },
    {
      $id: 'resyncRequired',
      additionalProperties: false,
      description: 'Events after `since` cannot be replayed: refetch the state this subscription covers. Sent right after its ack.',
    },
  ),
  historyTruncated: Type.Object(
    {
      type: Type.Literal('historyTruncated'),
      subscription: Type.Union([Type.Literal('subscribe'), Type.Literal('subscribeOutput')], {
        description: 'The subscription whose `"since":"start"` history begins after the task\'s first event',
      }),
      taskId: Uuid,
      reason: Type.Union(literals(TRUNCATED_REASONS), {
        description:
          'retention: retention pruned the older events; maxReplay: more events are retained than one replay sends, only the newest `maxReplay` follow',
      }),
    },
    {
      $id: 'historyTruncated',
      additionalProperties: false,
      description:
        'Older events of this stream are gone: the history that follows does not begin at the task\'s first event. Sent after the ack of a `"since":"start"` subscription, before its first replayed event.',
    },
  ),
  error: Type.Object(
    {
      type: Type.Literal('error'),
      code: Type.String({ description: 'A stable code; see the error code table' }),
      message: Type.String({ description: 'Human-readable detail; do not parse it' }),
    },
    { $id: 'error', additionalProperties: false, description: 'A frame was refused; the socket stays open.' },
  ),
} as const satisfies Record<ServerFrameType, TSchema>;

export type ServerMessageType = keyof typeof ServerMessages;
export type ServerMessage = { [K in ServerMessageType]: Static<(typeof ServerMessages)[K]> }[ServerMessageType];

// What host code hands to `app.mesh.*.publish`. `ownerId` omitted means "look it up";
// `null` means the task has no owner (admins only).

const OwnerId = Type.Optional(Type.Union([Uuid, Type.Null()]));
const nullable = <T extends TSchema>(schema: T) => Type.Optional(Type.Union([schema, Type.Null()]));

export const TaskUpdateNotification = Type.Object({ ...TaskUpdatedFields, ownerId: OwnerId }, { $id: 'TaskUpdateNotification' });
export type TaskUpdateNotification = Static<typeof TaskUpdateNotification>;

export const TaskOutputNotification = Type.Object(
  {
    ...TaskOutputFields,
    ownerId: OwnerId,
    toolName: nullable(Type.String()),
    isError: nullable(Type.Boolean()),
    costUsd: nullable(Type.Number()),
    durationMs: nullable(Type.Integer()),
  },
  { $id: 'TaskOutputNotification' },
);
export type TaskOutputNotification = Static<typeof TaskOutputNotification>;
