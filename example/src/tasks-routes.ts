/**
 * The example host's task API: the routes whose changes produce the events the plugin streams.
 * A task that is not the caller's answers 404, exactly like one that does not exist.
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Sql, TransactionSql } from 'postgres';
import { TaskOutputFields, UUID_REGEX, Uuid, type Principal } from 'mesh-subscriptions';

const Task = Type.Object(
  {
    id: Type.String({ format: 'uuid' }),
    ownerId: Type.Union([Type.String({ format: 'uuid' }), Type.Null()]),
    name: Type.String(),
    status: Type.String(),
    version: Type.Integer(),
    createdAt: Type.String({ format: 'date-time' }),
    updatedAt: Type.String({ format: 'date-time' }),
  },
  { $id: 'Task' },
);
type Task = Static<typeof Task>;

export const ApiError = Type.Object(
  { code: Type.String(), message: Type.String() },
  { $id: 'ApiError', description: 'Every error answer: a stable code and a human-readable message' },
);

const Name = Type.String({ minLength: 1, maxLength: 200 });
const Status = Type.String({ minLength: 1, maxLength: 64 });
const TaskParams = Type.Object({ taskId: Uuid });
const ListQuery = Type.Object(
  {
    limit: Type.Optional(Type.String({ pattern: '^(100|[1-9][0-9]?)$', description: '1–100, default 50' })),
    after: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_-]{1,200}$', description: 'The `next` of the previous page' })),
  },
  { additionalProperties: false },
);
const TaskPage = Type.Object({
  tasks: Type.Array(Task),
  next: Type.Union([Type.String(), Type.Null()], { description: 'Pass as `after` for the next page; null on the last one' }),
});

const CreateTaskBody = Type.Object(
  {
    name: Name,
    status: Type.Optional(Status),
    ownerId: Type.Optional(Type.Union([Uuid, Type.Null()], { description: 'Admins only; default: the caller' })),
  },
  { additionalProperties: false },
);
const PatchTaskBody = Type.Object(
  { name: Type.Optional(Name), status: Type.Optional(Status) },
  { additionalProperties: false, minProperties: 1 },
);
const { taskId: _taskId, ...outputFields } = TaskOutputFields;
const OutputBody = Type.Object(
  {
    ...outputFields,
    content: Type.String({ maxLength: 4 * 1024 * 1024 }),
    isPartial: Type.Optional(Type.Boolean({ default: false })),
  },
  { additionalProperties: false },
);

interface TaskRow {
  id: string;
  owner_id: string | null;
  name: string;
  status: string;
  version: number;
  created_at: Date;
  updated_at: Date;
}

const toTask = (row: TaskRow): Task => ({
  id: row.id,
  ownerId: row.owner_id,
  name: row.name,
  status: row.status,
  version: row.version,
  createdAt: row.created_at.toISOString(),
  updatedAt: row.updated_at.toISOString(),
});

const COLUMNS = 'id::text AS id, owner_id::text AS owner_id, name, status, version, created_at, updated_at';

/** The credentials of the API (components.securitySchemes in app.ts): a key in its header, or as a bearer token. */
export const SECURITY: Array<Record<string, string[]>> = [{ apiKey: [] }, { bearer: [] }];
const secured = { security: SECURITY, tags: ['Tasks'] };
/** The database is out of reach (restarting, down, too slow): nothing to fix, retry. */
const Unavailable = Type.Object(
  { code: Type.Literal('UNAVAILABLE'), message: Type.String() },
  {
    description: 'The database is unavailable (restarting, unreachable or too slow); retry after `Retry-After` seconds',
    headers: { 'retry-after': { type: 'integer', description: 'Seconds to wait before retrying' } },
  },
);
const errors = { 400: ApiError, 401: ApiError, 404: ApiError, 503: Unavailable };

function notFound(reply: FastifyReply) {
  return reply.code(404).send({ code: 'NOT_FOUND', message: 'task not found' });
}

export interface TaskRoutesOptions {
  sql: Sql<any>;
  authenticate: (request: FastifyRequest) => Promise<Principal | null>;
}

export async function taskRoutes(app: FastifyInstance, { sql, authenticate }: TaskRoutesOptions): Promise<void> {
  const principals = new WeakMap<FastifyRequest, Principal>();
  app.addHook('preHandler', async (request, reply) => {
    const principal = await authenticate(request);
    if (!principal) return reply.code(401).send({ code: 'UNAUTHORIZED', message: 'missing or invalid API key' });
    principals.set(request, principal);
  });
  const who = (request: FastifyRequest) => principals.get(request)!;

  /** `taskUpdated` for a task as it now is, naming the fields that changed and who changed them. */
  /** Published in the transaction that changed the task (an outbox): both commit, or neither. */
  const announce = (tx: TransactionSql<any>, task: Task, updatedFields: string[], by: Principal) =>
    app.mesh.taskUpdates.publish(
      {
        taskId: task.id,
        ownerId: task.ownerId,
        version: task.version,
        status: task.status,
        updatedFields,
        updatedBy: by.ownerId ?? 'admin',
      },
      { sql: tx },
    );

  /** The task if the principal may see it, locked for update when inside a transaction. */
  async function visibleTask(q: Sql<any> | TransactionSql<any>, id: string, p: Principal, lock = false): Promise<TaskRow | undefined> {
    const [row] = await q<TaskRow[]>`
      SELECT ${q.unsafe(COLUMNS)} FROM tasks
      WHERE id = ${id} AND (${p.admin} OR owner_id = ${p.ownerId})
      ${lock ? q`FOR UPDATE` : q``}`;
    return row;
  }

  app.post<{ Body: Static<typeof CreateTaskBody> }>(
    '/mesh/tasks',
    { schema: { ...secured, summary: 'Create a task', body: CreateTaskBody, response: { 201: Task, 403: ApiError, ...errors } } },
    async (request, reply) => {
      const p = who(request);
      const { name, status = 'pending' } = request.body;
      let ownerId = p.ownerId;
      if (request.body.ownerId !== undefined) {
        if (!p.admin) return reply.code(403).send({ code: 'FORBIDDEN', message: 'only admins may set ownerId' });
        ownerId = request.body.ownerId?.toLowerCase() ?? null;
      }
      if (ownerId === null && !p.admin) {
        return reply.code(403).send({ code: 'FORBIDDEN', message: 'this key owns no tasks' });
      }
      const task = await sql.begin(async (tx) => {
        const [row] = await tx<TaskRow[]>`
          INSERT INTO tasks (owner_id, name, status) VALUES (${ownerId}, ${name}, ${status})
          RETURNING ${tx.unsafe(COLUMNS)}`;
        const created = toTask(row!);
        await announce(tx, created, ['name', 'status'], p);
        return created;
      });
      return reply.code(201).send(task);
    },
  );

  app.get<{ Querystring: Static<typeof ListQuery> }>(
    '/mesh/tasks',
    {
      schema: {
        ...secured,
        summary: "The caller's tasks, newest first, a page at a time",
        description: 'Admins see every task. Pages are keyset-paginated: a task created meanwhile never shifts a page.',
        querystring: ListQuery,
        response: { 200: TaskPage, ...errors },
      },
    },
    async (request, reply) => {
      const p = who(request);
      const limit = Number(request.query.limit ?? 50);
      let after: { createdAt: string; id: string } | undefined;
      if (request.query.after !== undefined) {
        const [createdAt, id] = Buffer.from(request.query.after, 'base64url').toString().split('|');
        if (!createdAt || !id || Number.isNaN(Date.parse(createdAt)) || !UUID_REGEX.test(id)) {
          return reply.code(400).send({ code: 'VALIDATION_ERROR', message: 'querystring/after is not a page cursor' });
        }
        after = { createdAt, id };
      }
      // The page cursor keeps created_at to the microsecond: a JS Date, or a parameter typed
      // timestamptz (postgres.js passes those through Date), would round it to the millisecond.
      const rows = await sql<(TaskRow & { created_key: string })[]>`
        SELECT ${sql.unsafe(COLUMNS)}, created_at::text AS created_key FROM tasks
        WHERE (${p.admin} OR owner_id = ${p.ownerId})
          ${after ? sql`AND (created_at, id) < (${after.createdAt}::text::timestamptz, ${after.id}::uuid)` : sql``}
        ORDER BY created_at DESC, id DESC
        LIMIT ${limit + 1}`;
      const page = rows.slice(0, limit);
      const last = page.at(-1);
      const next = rows.length > limit && last ? Buffer.from(`${last.created_key}|${last.id}`).toString('base64url') : null;
      return { tasks: page.map(toTask), next };
    },
  );

  app.get<{ Params: Static<typeof TaskParams> }>(
    '/mesh/tasks/:taskId',
    { schema: { ...secured, summary: 'Read a task', params: TaskParams, response: { 200: Task, ...errors } } },
    async (request, reply) => {
      const row = await visibleTask(sql, request.params.taskId, who(request));
      return row ? toTask(row) : notFound(reply);
    },
  );

  app.patch<{ Params: Static<typeof TaskParams>; Body: Static<typeof PatchTaskBody> }>(
    '/mesh/tasks/:taskId',
    {
      schema: {
        ...secured,
        summary: 'Change a task',
        description: 'Bumps `version` and publishes `taskUpdated` naming the changed fields. A body that changes nothing changes nothing.',
        params: TaskParams,
        body: PatchTaskBody,
        response: { 200: Task, ...errors },
      },
    },
    async (request, reply) => {
      const p = who(request);
      const result = await sql.begin(async (tx) => {
        const current = await visibleTask(tx, request.params.taskId, p, true);
        if (!current) return undefined;
        const changed = (['name', 'status'] as const).filter(
          (field) => request.body[field] !== undefined && request.body[field] !== current[field],
        );
        if (changed.length === 0) return { row: current, changed };
        const [row] = await tx<TaskRow[]>`
          UPDATE tasks SET
            name = ${request.body.name ?? current.name},
            status = ${request.body.status ?? current.status},
            version = version + 1,
            updated_at = now()
          WHERE id = ${current.id}
          RETURNING ${tx.unsafe(COLUMNS)}`;
        // The row lock taken above orders concurrent changes of this task, and so their events.
        await announce(tx, toTask(row!), [...changed], p);
        return { row: row!, changed };
      });
      if (!result) return notFound(reply);
      return toTask(result.row);
    },
  );

  app.post<{ Params: Static<typeof TaskParams>; Body: Static<typeof OutputBody> }>(
    '/mesh/tasks/:taskId/output',
    {
      schema: {
        ...secured,
        summary: "Append to a task's live output",
        description: 'Publishes `taskOutput` to the sockets following this task’s output.',
        params: TaskParams,
        body: OutputBody,
        response: {
          202: Type.Object({
            taskId: Type.String({ format: 'uuid' }),
            cursor: Type.String({ description: 'The event’s cursor: where a `since` would resume after it' }),
          }),
          ...errors,
        },
      },
    },
    async (request, reply) => {
      const row = await visibleTask(sql, request.params.taskId, who(request));
      if (!row) return notFound(reply);
      const cursor = await app.mesh.taskOutput.publish({
        ...request.body,
        taskId: row.id,
        ownerId: row.owner_id,
        isPartial: request.body.isPartial ?? false,
      });
      return reply.code(202).send({ taskId: row.id, cursor });
    },
  );
}
