/**
 * The host's tasks table: its id and owner column names are options (`tasks.idColumn`,
 * `tasks.ownerColumn`), used by the owner lookups, the writer's owner join and the SQL functions;
 * a table or column that does not match fails the start (`onReady`) with a message naming them,
 * instead of every subscribe answering `UNAVAILABLE` afterwards.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import Fastify, { type FastifyInstance } from 'fastify';
import meshSubscriptions, { MeshSchemaError, type MeshSubscriptionsOptions } from '../src/index.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { TestClient } from './helpers/ws-client.js';

let db: TestDatabase;

before(async () => {
  db = await createTestDatabase();
  await db.sql`CREATE TABLE work_items (task_id uuid PRIMARY KEY, user_id uuid NULL, title text NOT NULL DEFAULT '')`;
  await db.sql`CREATE TABLE text_ids (id text PRIMARY KEY, owner_id uuid NULL)`;
});
after(() => db.drop());

/** The plugin on port 0; the principal is the owner named in the `x-owner` header. */
async function host(options: Partial<MeshSubscriptionsOptions>): Promise<{ app: FastifyInstance; started: Promise<void> }> {
  const app = Fastify();
  await app.register(meshSubscriptions, {
    authenticate: async (request) => {
      const owner = request.headers['x-owner'];
      return typeof owner === 'string' ? { ownerId: owner, admin: false } : null;
    },
    sql: db.sql,
    ...options,
  });
  return { app, started: app.listen({ host: '127.0.0.1', port: 0 }).then(() => undefined) };
}

async function refusedStart(options: Partial<MeshSubscriptionsOptions>, ...quoted: string[]): Promise<void> {
  const { app, started } = await host(options);
  try {
    await assert.rejects(started, (error: unknown) => {
      assert.ok(error instanceof MeshSchemaError, `not a MeshSchemaError: ${String(error)}`);
      for (const q of quoted) assert.ok(error.message.includes(q), `${JSON.stringify(error.message)} does not say ${q}`);
      return true;
    });
  } finally {
    await app.close();
  }
}

const connect = (app: FastifyInstance, owner: string) =>
  TestClient.connect(`ws://127.0.0.1:${(app.server.address() as { port: number }).port}/api/v1/mesh/tasks/subscribe`, { 'x-owner': owner });

test('a table with user_id where owner_id is expected fails the start, naming the option, the table and its columns', async () => {
  await refusedStart(
    { tasks: { table: 'work_items', idColumn: 'task_id' } },
    'option "tasks.ownerColumn" names column "owner_id", which table public.work_items does not have',
    'its columns: task_id uuid, user_id uuid, title text',
  );
  await refusedStart(
    { tasksTable: 'work_items' },
    'option "tasks.idColumn" names column "id", which table public.work_items does not have',
    'its columns: task_id uuid, user_id uuid, title text',
  );
});

test('a missing table, or an id column that is not uuid, fails the start naming them; so with the memory bus', async () => {
  await refusedStart(
    { tasks: { table: 'no_such_tasks' } },
    'option "tasks.table" names "no_such_tasks", and there is no such table in the search_path of role',
  );
  await refusedStart({ tasks: { table: 'elsewhere.tasks' } }, 'option "tasks.table" names "elsewhere.tasks", and there is no such table');
  await refusedStart(
    { tasks: { table: 'text_ids' } },
    'option "tasks.idColumn" names column public.text_ids.id, of type text; it must be uuid',
  );
  await refusedStart({ bus: 'memory', tasks: { table: 'work_items' } }, 'its columns: task_id uuid, user_id uuid, title text');
});

test('with its columns named, the table serves owner lookups, the writer’s owner join and the SQL functions', async () => {
  // The flat tasksTable beside the grouped columns: one option each, so both forms mix.
  const { app, started } = await host({ tasksTable: 'work_items', tasks: { idColumn: 'task_id', ownerColumn: 'user_id' } });
  try {
    await started;
    const alice = randomUUID();
    const bob = randomUUID();
    const mine = randomUUID();
    const theirs = randomUUID();
    await db.sql`INSERT INTO work_items (task_id, user_id) VALUES (${mine}, ${alice}), (${theirs}, ${bob})`;
    const client = await connect(app, alice);
    // Owner lookups: her task is subscribed, another's is not found (not UNAVAILABLE).
    assert.deepEqual(await client.request({ type: 'subscribe', taskId: mine }), { type: 'subscribed', taskId: mine });
    assert.equal((await client.request({ type: 'subscribe', taskId: theirs })).code, 'NOT_FOUND');
    await client.request({ type: 'unsubscribe', taskId: mine });
    assert.equal((await client.request({ type: 'subscribeAll' })).type, 'subscribedAll');
    // The writer settles a publish that names no owner from user_id: it reaches her subscribeAll.
    await app.mesh.taskUpdates.publish({ taskId: mine, version: 2, status: 'running', updatedFields: ['status'], updatedBy: 'js' });
    const fromJs = await client.next();
    assert.deepEqual([fromJs.type, fromJs.version], ['taskUpdated', 2]);
    // So do the SQL functions, with a NULL owner.
    await db.sql`SELECT public.mesh_publish_task_update(${mine}::uuid, NULL, 3, 'done', '{status}', 'sql')`;
    const fromSql = await client.next();
    assert.deepEqual([fromSql.type, fromSql.version], ['taskUpdated', 3]);
    const owners = await db.sql`SELECT DISTINCT owner_id::text FROM mesh_event_log WHERE task_id = ${mine}`;
    assert.deepEqual(
      owners.map((r) => r.owner_id),
      [alice],
    );
    await client.close();
  } finally {
    await app.close();
  }
});
