/**
 * Turns client frames into typed messages and server messages into JSON text. Validators are
 * compiled once at import; every server message is encoded once, whatever the number of recipients.
 */
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler';
import type { TSchema } from '@sinclair/typebox';
import { ClientMessages, TaskOutputNotification, TaskUpdateNotification, type ClientMessage } from './schemas.js';
import { MeshPublishError, type ErrorCode } from '../errors.js';
import { HISTORY_START, type TruncatedReason } from './wire.js';

const clientCheckers = new Map<string, TypeCheck<TSchema>>(
  Object.entries(ClientMessages).map(([type, schema]) => [type, TypeCompiler.Compile(schema)]),
);

export type ParseResult = { ok: true; message: ClientMessage } | { ok: false; reason: string };

/** Echoes of client input in error messages are cut short so a client cannot make us amplify it. */
function quote(value: unknown): string {
  const text = typeof value === 'string' ? value : String(value);
  return JSON.stringify(text.length > 64 ? `${text.slice(0, 64)}…` : text);
}

function firstProblem(check: TypeCheck<TSchema>, value: unknown): string {
  const error = check.Errors(value).First();
  if (!error) return 'frame does not match its schema';
  const field = error.path.replace(/^\//, '') || 'frame';
  if (field === 'taskId') {
    return error.value === undefined ? '"taskId" is required' : '"taskId" must be a UUID (8-4-4-4-12 hex digits)';
  }
  return `${quote(field)}: ${error.message}`;
}

export function parseClientFrame(text: string): ParseResult {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { ok: false, reason: 'frame is not valid JSON' };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return { ok: false, reason: 'frame must be a JSON object' };
  }
  const type = (value as { type?: unknown }).type;
  if (typeof type !== 'string') return { ok: false, reason: 'frame needs a string "type"' };
  const check = clientCheckers.get(type);
  if (!check) return { ok: false, reason: `unknown message type ${quote(type)}` };
  if (!check.Check(value)) return { ok: false, reason: firstProblem(check, value) };
  // Rebuilt from the schema's fields only: extra fields (even one named taskId on subscribeAll) stay behind.
  const { since } = value as { since?: string };
  if (type === 'unsubscribeAll') return { ok: true, message: { type } };
  if (type === 'subscribeAll') {
    if (since === HISTORY_START)
      return { ok: false, reason: `"since": "${HISTORY_START}" is for one task's stream (subscribe, subscribeOutput)` };
    return { ok: true, message: since === undefined ? { type } : { type, since } };
  }
  const { taskId } = value as { taskId: string };
  // Canonical lower case: acks echo it, and the subscription index keys on it.
  const message = { type, taskId: taskId.toLowerCase() } as ClientMessage & { since?: string };
  if (since !== undefined && (type === 'subscribe' || type === 'subscribeOutput')) message.since = since;
  return { ok: true, message };
}

// Server messages, as JSON text. The transport frames each once (src/core/frames.ts), and that
// frame is written as is to every socket it goes to.

const encode = (message: object): string => JSON.stringify(message);

export type AckType = 'subscribed' | 'unsubscribed' | 'outputSubscribed' | 'outputUnsubscribed';

export const encodeAck = (type: AckType, taskId: string): string => encode({ type, taskId });
export const SUBSCRIBED_ALL = encode({ type: 'subscribedAll' });
export const UNSUBSCRIBED_ALL = encode({ type: 'unsubscribedAll' });
export const encodeLagged = (taskId: string, skipped: number, cursor: string): string =>
  encode({ type: 'lagged', taskId, skipped, cursor });
export const encodeResyncRequired = (
  subscription: 'subscribe' | 'subscribeAll' | 'subscribeOutput',
  taskId: string | undefined,
  reason: string,
): string => encode({ type: 'resyncRequired', subscription, taskId, reason });
export const encodeHistoryTruncated = (subscription: 'subscribe' | 'subscribeOutput', taskId: string, reason: TruncatedReason): string =>
  encode({ type: 'historyTruncated', subscription, taskId, reason });
export const encodeError = (code: ErrorCode, message: string): string => encode({ type: 'error', code, message });

/** A validated task update with its owner settled: `null` means admins only. */
export interface TaskUpdateEvent {
  taskId: string;
  ownerId: string | null | undefined;
  version: number;
  status: string;
  updatedFields: string[];
  updatedBy: string;
}

/** A validated piece of output; optional fields are `undefined` when absent, never `null`. */
export interface TaskOutputEvent {
  taskId: string;
  ownerId: string | null | undefined;
  messageType: string;
  content: string;
  toolName: string | undefined;
  toolInput: unknown;
  isError: boolean | undefined;
  costUsd: number | undefined;
  durationMs: number | undefined;
  isPartial: boolean;
}

export function encodeTaskUpdated(e: TaskUpdateEvent, cursor: string): string {
  return encode({
    type: 'taskUpdated',
    taskId: e.taskId,
    version: e.version,
    status: e.status,
    updatedFields: e.updatedFields,
    updatedBy: e.updatedBy,
    cursor,
  });
}

/**
 * A string JSON.stringify would write as it is, between quotes: no quote, backslash, control
 * character or surrogate (a lone one is escaped). Anchored and negated, Irregexp scans it in about
 * half the time of a search for the first such character.
 */
// eslint-disable-next-line no-control-regex -- control characters are exactly what must be found
const PLAIN = /^[^"\\\u0000-\u001f\ud800-\udfff]*$/;

/**
 * A string as JSON. Node 20's JSON.stringify walks a string char by char (about 4 µs per KiB);
 * output content is mostly plain text with nothing to escape, which a regular expression finds
 * out in a fraction of that time. Anything else goes through JSON.stringify.
 */
export const jsonString = (s: string): string => (PLAIN.test(s) ? `"${s}"` : JSON.stringify(s));

/**
 * `,"name":value` as JSON.stringify writes an object member, or nothing for `undefined` (the Rust
 * server's skip_serializing_if). Strings, numbers and booleans are written here; JSON.stringify of
 * a small object cost more than a 1 KiB content's escaping check.
 */
function member(name: string, value: unknown): string {
  switch (typeof value) {
    case 'undefined':
      return '';
    case 'string':
      return `,"${name}":${jsonString(value)}`;
    case 'boolean':
      return `,"${name}":${value}`;
    case 'number':
      return `,"${name}":${Number.isFinite(value) ? value : 'null'}`;
    default: {
      // null and objects (toolInput); a function or symbol is left out as JSON.stringify leaves it
      // out, and what it refuses (a BigInt) throws: the event is unencodable.
      const json = JSON.stringify(value) as string | undefined;
      return json === undefined ? '' : `,"${name}":${json}`;
    }
  }
}

export function encodeTaskOutput(e: TaskOutputEvent, cursor: string): string {
  // The field order is the Rust server's.
  return (
    '{"type":"taskOutput"' +
    member('taskId', e.taskId) +
    member('messageType', e.messageType) +
    member('content', e.content) +
    member('toolName', e.toolName) +
    member('toolInput', e.toolInput) +
    member('isError', e.isError) +
    member('costUsd', e.costUsd) +
    member('durationMs', e.durationMs) +
    member('isPartial', e.isPartial) +
    member('cursor', cursor) +
    '}'
  );
}

// Host-side input of `publish`.

const updateCheck = TypeCompiler.Compile(TaskUpdateNotification);
const outputCheck = TypeCompiler.Compile(TaskOutputNotification);

function assertValid(check: TypeCheck<TSchema>, value: unknown): void {
  if (check.Check(value)) return;
  const error = check.Errors(value).First();
  throw new MeshPublishError(error ? `${error.path || '/'} ${error.message}` : 'does not match its schema');
}

/** How deep JSON may nest inside an event (`toolInput`): deeper input is refused, not stored. */
export const MAX_JSON_DEPTH = 64;
/**
 * The most an event may weigh: the UTF-8 length of its JSON without `taskId` and `ownerId` (what
 * the log stores as its payload, measured alike on publish, in SQL and on reading), so one frame
 * fits every socket's buffers.
 */
export const MAX_EVENT_BYTES = 2 * 1024 * 1024;

/**
 * What PostgreSQL and every JSON parser on the way accept: strings of well-formed UTF-16 (a lone
 * surrogate has no UTF-8 form) and nesting within MAX_JSON_DEPTH. A NUL is fine: it travels escaped.
 */
function assertStorable(value: unknown, path: string, depth: number): void {
  if (typeof value === 'string') {
    if (!value.isWellFormed()) throw new MeshPublishError(`${path} contains a lone surrogate (not valid Unicode)`);
    return;
  }
  if (typeof value !== 'object' || value === null) return;
  if (depth >= MAX_JSON_DEPTH) throw new MeshPublishError(`${path} nests deeper than ${MAX_JSON_DEPTH} levels`);
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) assertStorable(value[i], `${path}/${i}`, depth + 1);
    return;
  }
  for (const key of Object.keys(value)) {
    if (!key.isWellFormed()) throw new MeshPublishError(`${path} has a key with a lone surrogate (not valid Unicode)`);
    assertStorable((value as Record<string, unknown>)[key], `${path}/${key}`, depth + 1);
  }
}

function assertSize(bytes: number): void {
  if (bytes > MAX_EVENT_BYTES)
    throw new MeshPublishError(`the event weighs ${bytes} bytes as JSON; at most ${MAX_EVENT_BYTES} are allowed`);
}

const lower = (id: string | null | undefined) => (typeof id === 'string' ? id.toLowerCase() : id);
const absentIfNull = <T>(value: T | null | undefined): T | undefined => (value === null ? undefined : value);

export function toTaskUpdateEvent(n: unknown): TaskUpdateEvent {
  assertValid(updateCheck, n);
  const v = n as TaskUpdateNotification;
  assertStorable(v.status, '/status', 0);
  assertStorable(v.updatedBy, '/updatedBy', 0);
  assertStorable(v.updatedFields, '/updatedFields', 0);
  // Strings only: the JSON can be no larger than six bytes per UTF-16 unit (\uXXXX) plus punctuation.
  const units = v.status.length + v.updatedBy.length + v.updatedFields.reduce((n, f) => n + f.length + 3, 0);
  if (units * 6 + 256 > MAX_EVENT_BYTES) assertSize(Buffer.byteLength(JSON.stringify({ ...v, taskId: undefined, ownerId: undefined })));
  return {
    taskId: v.taskId.toLowerCase(),
    ownerId: lower(v.ownerId),
    version: v.version,
    status: v.status,
    updatedFields: [...v.updatedFields],
    updatedBy: v.updatedBy,
  };
}

export function toTaskOutputEvent(n: unknown): TaskOutputEvent {
  assertValid(outputCheck, n);
  const v = n as TaskOutputNotification;
  assertStorable(v.messageType, '/messageType', 0);
  assertStorable(v.content, '/content', 0);
  if (typeof v.toolName === 'string') assertStorable(v.toolName, '/toolName', 0);
  let toolInputBytes = 0;
  if (v.toolInput !== undefined && v.toolInput !== null) {
    assertStorable(v.toolInput, '/toolInput', 0);
    toolInputBytes = Buffer.byteLength(JSON.stringify(v.toolInput));
  }
  // The content is the one large field: its exact JSON length is measured only when it could matter.
  const units = v.messageType.length + (v.toolName?.length ?? 0) + v.content.length;
  if (units * 6 + toolInputBytes + 512 > MAX_EVENT_BYTES) {
    assertSize(
      Buffer.byteLength(jsonString(v.content)) +
        Buffer.byteLength(JSON.stringify({ ...v, content: '', taskId: undefined, ownerId: undefined })),
    );
  }
  return {
    taskId: v.taskId.toLowerCase(),
    ownerId: lower(v.ownerId),
    messageType: v.messageType,
    content: v.content,
    toolName: absentIfNull(v.toolName),
    toolInput: absentIfNull(v.toolInput),
    isError: absentIfNull(v.isError),
    costUsd: absentIfNull(v.costUsd),
    durationMs: absentIfNull(v.durationMs),
    isPartial: v.isPartial,
  };
}
