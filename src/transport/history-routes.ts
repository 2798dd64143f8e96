/**
 * The REST history of one task: `GET {prefix}/mesh/tasks/{taskId}/output` and `…/updates`, pages
 * of the task's retained events, oldest first, keyset-paged by cursor. Each item is the very
 * WebSocket frame (its JSON text, not encoded again), and the page's `cursor` is where a
 * `subscribeOutput`/`subscribe` `since` goes live with no gap and no repeat. Authenticated and
 * scoped like the upgrade: the host's `authenticate`, whoever may see the task now.
 */
import { KindGuard, Type, type Static, type TSchema } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { Value } from '@sinclair/typebox/value';
import type { FastifyInstance, FastifyReply, FastifySchema, FastifySchemaCompiler } from 'fastify';
import { refuse } from '../auth/admission.js';
import { authenticateRequest } from '../auth/authenticate.js';
import type { EventHistory } from '../core/history.js';
import type { Replayed } from '../core/history-types.js';
import { HistoryError, UpgradeError } from '../errors.js';
import { ServerMessages, Uuid } from '../protocol/schemas.js';
import { HISTORY_START, OUTPUT_HISTORY_PATH, UPDATES_HISTORY_PATH, type ResyncReason } from '../protocol/wire.js';
import type { ResolvedOptions } from '../options.js';
import { payloadOf } from './websocket-frame.js';

/** What the routes read of the history: one page of one task's stream, for one principal. */
export type TaskHistory = Pick<EventHistory, 'taskPage'>;

export interface HistoryRoutesOptions {
  prefix: string;
  authenticate: ResolvedOptions['authenticate'];
  history: TaskHistory;
  /** How bodies go out: as sent (see `asIs` in src/plugin.ts). */
  serializerCompiler: () => (payload: unknown) => string;
}

export const DEFAULT_PAGE_ROWS = 100;
export const MAX_PAGE_ROWS = 500;

const Params = Type.Object({ taskId: Uuid });
const Query = Type.Object({
  after: Type.Optional(
    Type.String({
      minLength: 1,
      maxLength: 128,
      description:
        'The `cursor` of the previous page (or any event cursor of this task’s stream): the page starts after it. ' +
        'Absent: from the oldest retained event.',
    }),
  ),
  limit: Type.Optional(
    Type.Integer({
      minimum: 1,
      maximum: MAX_PAGE_ROWS,
      default: DEFAULT_PAGE_ROWS,
      description: `Most items in the page, 1–${MAX_PAGE_ROWS}`,
    }),
  ),
});
type Params = Static<typeof Params>;
type Query = Static<typeof Query>;

/**
 * The frame schemas inline, without their `$id`: with it, a host's OpenAPI generator lifts them into
 * its own components, under names of its choosing (`def-1`), beside the host's schemas.
 */
const frameSchema = ({ $id: _id, ...schema }: TSchema): TSchema => schema;

const page = (item: TSchema, what: string) =>
  Type.Object(
    {
      items: Type.Array(item, { description: `${what}, oldest first: each exactly the WebSocket frame, with its \`cursor\`` }),
      cursor: Type.String({
        description:
          'Pass it as `after` for the next page, or as `since` on the WebSocket subscription to go live with no gap ' +
          'and no repeat. On the last page it is past every event the page could see, even when `items` is empty.',
      }),
      more: Type.Boolean({ description: 'Another page follows: ask again with `after` = `cursor`' }),
      truncated: Type.Boolean({
        description: 'Without `after` only: older events of this task were pruned (retention) before the first item',
      }),
    },
    { description: 'One page of the task’s retained history' },
  );

const ErrorBody = Type.Object({ code: Type.String(), message: Type.String() });
const errorAnswer = (description: string) => ({ description, ...ErrorBody });
const RETRY_AFTER_HEADER = { 'retry-after': { type: 'integer', description: 'Seconds to wait before retrying' } };

function responses(item: TSchema, what: string) {
  return {
    200: { ...page(item, what), description: 'A page of the history.' },
    400: errorAnswer(
      '`INVALID_REQUEST`: `taskId` is not a UUID, or `limit` not an integer 1–500, or `after` not 1–128 characters; ' +
        '`INVALID_CURSOR`: `after` is not a cursor of this log.',
    ),
    401: errorAnswer('`UNAUTHORIZED`: missing or invalid credentials (as on the upgrade).'),
    404: errorAnswer('`NOT_FOUND`: the task does not exist or the caller may not see it (deliberately indistinguishable).'),
    410: errorAnswer('`CURSOR_EXPIRED`: events after `after` were pruned; read the history again without `after`.'),
    503: {
      ...errorAnswer(
        '`UNAVAILABLE`: the credentials could not be checked, or the event log or the task’s owner not read, right now; ' +
          'retry after `Retry-After` seconds.',
      ),
      headers: RETRY_AFTER_HEADER,
    },
  };
}

/**
 * Query strings carry strings: an integer's is converted when it is written as one (`7`, `-1`),
 * nothing else (TypeBox's own conversion would read `1.5` and `1e2` as 1, `0x10` as 16).
 */
function integersOf(schema: TSchema, data: unknown): unknown {
  if (!KindGuard.IsObject(schema) || typeof data !== 'object' || data === null) return data;
  const converted: Record<string, unknown> = { ...(data as Record<string, unknown>) };
  for (const [name, property] of Object.entries(schema.properties)) {
    const value = converted[name];
    if (KindGuard.IsInteger(property) && typeof value === 'string' && /^-?[0-9]{1,15}$/.test(value)) converted[name] = Number(value);
  }
  return converted;
}

/**
 * The routes' own validation, with TypeBox: it does not depend on the host's Ajv settings (a host
 * that turns type coercion off, as the example does, would otherwise refuse every `limit`).
 */
const typeBoxValidator: FastifySchemaCompiler<FastifySchema> = (route) => {
  // Only this file's TypeBox schemas (params, querystring) reach it.
  const schema = route.schema as TSchema;
  const check = TypeCompiler.Compile(schema);
  return (data: unknown) => {
    const value: unknown = Value.Default(schema, integersOf(schema, data));
    if (check.Check(value)) return { value };
    const problem = check.Errors(value).First();
    const field = problem?.path.replace(/^\//, '') ?? '';
    // The input itself is never echoed: a client cannot make the answer carry what it sent.
    const detail =
      field === 'taskId'
        ? '`taskId` must be a UUID (8-4-4-4-12 hex digits)'
        : `\`${field || 'request'}\`: ${problem?.message ?? 'invalid'}`;
    return { error: new Error(detail) };
  };
};

type Answer = (typeof HistoryError)[keyof typeof HistoryError];

/** `{code, message}` as the upgrade's refusals are (a 503 says when to retry), `detail` after the message. */
function answer(reply: FastifyReply, error: Answer, detail?: string): Promise<void> {
  return refuse(reply, detail === undefined ? error : { ...error, message: `${error.message}: ${detail}` });
}

const RESYNC_ANSWER: Record<ResyncReason, Answer> = {
  unknownCursor: HistoryError.INVALID_CURSOR,
  expired: HistoryError.CURSOR_EXPIRED,
  // Not expected of a task's pages (they are read without a replay's reach limit); should it come,
  // reading again from the start is the way on, as for an expired cursor.
  tooFarBehind: HistoryError.CURSOR_EXPIRED,
  unavailable: HistoryError.UNAVAILABLE,
};

const OPEN = Buffer.from('{"items":[');
const COMMA = Buffer.from(',');

/** The body, around the frames' JSON text as it is. */
function pageBody(frames: readonly Replayed[], cursor: string, more: boolean, truncated: boolean): Buffer {
  const parts: Buffer[] = [OPEN];
  frames.forEach(({ frame }, i) => {
    if (i > 0) parts.push(COMMA);
    parts.push(payloadOf(frame));
  });
  parts.push(Buffer.from(`],"cursor":${JSON.stringify(cursor)},"more":${more},"truncated":${truncated}}`));
  return Buffer.concat(parts);
}

const STREAMS = [
  {
    kind: 'output',
    path: OUTPUT_HISTORY_PATH,
    item: frameSchema(ServerMessages.taskOutput),
    what: '`taskOutput` frames',
    summary: 'Read a task’s retained output, a page at a time',
  },
  {
    kind: 'update',
    path: UPDATES_HISTORY_PATH,
    item: frameSchema(ServerMessages.taskUpdated),
    what: '`taskUpdated` frames',
    summary: 'Read a task’s retained updates, a page at a time',
  },
] as const;

const DESCRIPTION = [
  'The task’s retained events, oldest first, as the WebSocket sends them. Without `after`, the first page starts at the',
  'oldest retained event; pass each page’s `cursor` as `after` for the next, while `more`. The last page’s `cursor`,',
  'as `since` on the WebSocket subscription, goes live from there with no gap and no repeat. Authenticated as the',
  'upgrade is; a task the caller may not see now answers 404 like a missing one. See PROTOCOL.md, "REST history".',
].join(' ');

export async function historyRoutes(child: FastifyInstance, options: HistoryRoutesOptions): Promise<void> {
  const { prefix, authenticate, history } = options;
  for (const stream of STREAMS) {
    // Documentation keys (`summary`, `tags`) are OpenAPI's, not Fastify's own FastifySchema: kept apart
    // from the route literal, as a host without @fastify/swagger's types does not know them.
    const schema = {
      summary: stream.summary,
      description: DESCRIPTION,
      tags: ['Mesh'],
      params: Params,
      querystring: Query,
      response: responses(stream.item, stream.what),
    };
    child.route<{ Params: Params; Querystring: Query }>({
      method: 'GET',
      url: `${prefix}${stream.path}`,
      serializerCompiler: options.serializerCompiler,
      validatorCompiler: typeBoxValidator,
      // Answered in the handler, after authentication, as INVALID_REQUEST (not the host's error handler's shape).
      attachValidation: true,
      schema,
      handler: async (request, reply) => {
        const outcome = await authenticateRequest(authenticate, request);
        if (!outcome.ok && outcome.why === 'unavailable') {
          // The host's store is down: no verdict on the credentials, so "retry", never 401.
          request.log.warn({ err: outcome.error }, 'authenticate threw; no history (503)');
          return refuse(reply, UpgradeError.UNAVAILABLE);
        }
        if (!outcome.ok) return refuse(reply, UpgradeError.UNAUTHORIZED);
        if (request.validationError) return answer(reply, HistoryError.INVALID_REQUEST, request.validationError.message);

        const taskId = request.params.taskId.toLowerCase();
        const { after = HISTORY_START, limit = DEFAULT_PAGE_ROWS } = request.query;
        let read: Awaited<ReturnType<TaskHistory['taskPage']>>;
        try {
          read = await history.taskPage(outcome.principal, { kind: stream.kind, taskId }, after, limit);
        } catch (error) {
          request.log.warn({ err: error, taskId }, 'the history could not be read; answered 503');
          return answer(reply, HistoryError.UNAVAILABLE);
        }
        if (!read.ok) return answer(reply, 'hidden' in read ? HistoryError.NOT_FOUND : RESYNC_ANSWER[read.resync]);
        const { frames, last, more, truncated } = read.page;
        return reply
          .code(200)
          .header('cache-control', 'no-store')
          .type('application/json; charset=utf-8')
          .send(pageBody(frames, last, more, after === HISTORY_START && truncated !== undefined));
      },
    });
  }
}
