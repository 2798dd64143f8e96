/**
 * The TypeScript client (`mesh-subscriptions/client`) against the real server: typed events and
 * per-task handlers, resume without gap or duplicate across a server restart, and a revoked key
 * that stops it for good (an outage does not: test/auth-outage.test.ts).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import {
  createMeshClient,
  MeshClientClosedError,
  MeshSubscriptionError,
  type MeshClient,
  type MeshClientOptions,
} from '../src/client/index.js';
import { createApiKey, revokeApiKey } from '../example/src/api-keys.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { statusWhere } from './helpers/client-status.js';
import { startServerProcess } from './helpers/process.js';
import { startTestServer, type TestServer } from './helpers/server.js';

let db: TestDatabase;
let server: TestServer;
before(async () => {
  db = await createTestDatabase();
  server = await startTestServer({ db, mesh: { reauthIntervalMs: 100 } });
});
after(async () => {
  await server.close();
  await db.drop();
});

const fast: Partial<MeshClientOptions> = { WebSocket, initialDelayMs: 20, maxDelayMs: 200 };
const clients: MeshClient[] = [];
function client(url: string, apiKey: string): MeshClient {
  const c = createMeshClient({ url, apiKey, ...fast });
  clients.push(c);
  return c;
}
after(() => clients.forEach((c) => c.close()));

/** Collects values until `count` have arrived. */
function collector<T>(count: number) {
  const values: T[] = [];
  let done!: () => void;
  const complete = new Promise<void>((resolve) => (done = resolve));
  return {
    values,
    complete,
    push(value: T) {
      values.push(value);
      if (values.length === count) done();
    },
  };
}

test('typed events and per-task handlers; a refused subscription rejects its ready with the code', async () => {
  const { ownerId, key } = await server.owner();
  const [one, two] = [await server.task(ownerId), await server.task(ownerId)];
  const c = client(server.baseUrl, key);
  const perTask = collector<number>(1);
  const all = collector<string>(2);
  const output = collector<string>(1);
  await c.subscribe(one, (e) => perTask.push(e.version)).ready;
  await c.subscribeAll((e) => all.push(e.taskId)).ready;
  await c.subscribeOutput(two, (e) => output.push(e.content)).ready;
  const refused = c.subscribe(await server.task(null)).ready;
  await assert.rejects(refused, (e: MeshSubscriptionError) => e instanceof MeshSubscriptionError && e.code === 'NOT_FOUND');
  await server.app.mesh.taskUpdates.publish({
    taskId: one,
    ownerId,
    version: 3,
    status: 'running',
    updatedFields: ['status'],
    updatedBy: 't',
  });
  await server.app.mesh.taskUpdates.publish({
    taskId: two,
    ownerId,
    version: 1,
    status: 'done',
    updatedFields: ['status'],
    updatedBy: 't',
  });
  await server.app.mesh.taskOutput.publish({ taskId: two, ownerId, messageType: 'assistant', content: 'hello', isPartial: false });
  await Promise.all([perTask.complete, all.complete, output.complete]);
  assert.deepEqual(perTask.values, [3]);
  assert.deepEqual(all.values, [one, two]);
  assert.deepEqual(output.values, ['hello']);
  c.close();
});

test(
  'a server restart mid-stream: the client reconnects and resumes each subscription, no gap, no duplicate',
  { timeout: 90_000 },
  async () => {
    let process1 = await startServerProcess(db.url);
    const port = new URL(process1.url).port;
    const key = await createApiKey(db.sql, { ownerId: null, admin: true });
    const [task] = await db.sql<{ id: string }[]>`INSERT INTO tasks (owner_id, name) VALUES (NULL, 'restart') RETURNING id::text AS id`;
    const total = 300;
    const c = client(process1.url, key);
    const versions = collector<number>(total);
    const everything = collector<number>(total);
    const outputs = collector<string>(total);
    let halfway!: () => void;
    const fiftyIn = new Promise<void>((resolve) => (halfway = resolve));
    await c.subscribe(task!.id, (e) => {
      versions.push(e.version);
      if (versions.values.length === 50) halfway();
    }).ready;
    await c.subscribeAll((e) => everything.push(e.version)).ready;
    await c.subscribeOutput(task!.id, (e) => outputs.push(e.content)).ready;
    const statuses: string[] = [];
    c.on('status', (s) => statuses.push(s.state));

    // Published through the SQL functions, so publishing goes on while no server runs.
    const publishing = (async () => {
      for (let v = 1; v <= total; v++) {
        await db.sql`SELECT mesh_publish_task_update(${task!.id}::uuid, NULL, ${v}, 'running', '{status}', 'test')`;
        await db.sql`SELECT mesh_publish_task_output(${task!.id}::uuid, NULL, 'assistant', ${String(v)}, NULL, NULL, NULL, NULL, NULL, NULL)`;
      }
    })();
    await fiftyIn;
    process1.child.kill('SIGTERM');
    await once(process1.child, 'exit');
    process1 = await startServerProcess(db.url, { PORT: port });
    await publishing;
    await Promise.all([versions.complete, everything.complete, outputs.complete]);
    const expected = Array.from({ length: total }, (_, i) => i + 1);
    assert.deepEqual(versions.values, expected);
    assert.deepEqual(everything.values, expected);
    assert.deepEqual(outputs.values.map(Number), expected);
    assert.ok(statuses.includes('reconnecting') && statuses.at(-1) === 'open', statuses.join(' → '));
    c.close();
    process1.child.kill('SIGTERM');
    await once(process1.child, 'exit');
  },
);

test('a revoked key: the open socket is closed with 4401 and the client stops retrying, saying why', async () => {
  const { key } = await server.owner();
  const c = client(server.baseUrl, key);
  await c.subscribeAll().ready;
  await revokeApiKey(db.sql, key);
  const closed = await statusWhere(c, (s) => s.state === 'closed');
  assert.deepEqual(closed, { state: 'closed', reason: 'unauthorized', code: 4401, message: 'credentials no longer valid' });

  // A key refused from the start: the ticket is refused, the client never opens a socket.
  const late = client(server.baseUrl, key);
  const seen: string[] = [];
  late.on('status', (s) => seen.push(s.state));
  assert.deepEqual(await statusWhere(late, (s) => s.state === 'closed'), {
    state: 'closed',
    reason: 'unauthorized',
    status: 401,
    message: 'ticket request: HTTP 401 UNAUTHORIZED',
  });
  assert.ok(!seen.includes('open') && !seen.includes('reconnecting'), seen.join(' → '));
});

describe('a server with tickets off (the plugin mounted without reauthenticate)', () => {
  let bare: TestServer;
  before(async () => {
    bare = await startTestServer({ db, mesh: { reauthenticate: undefined } });
  });
  after(() => bare.close());

  test('the default sign-in stops at once on the 404, saying why, and rejects what waited for an answer', async () => {
    const { key } = await bare.owner();
    const c = client(bare.baseUrl, key);
    const seen: string[] = [];
    c.on('status', (s) => seen.push(s.state));
    const ready = c.subscribeAll().ready;
    const closed = await statusWhere(c, (s) => s.state === 'closed');
    assert.deepEqual(closed, {
      state: 'closed',
      reason: 'notFound',
      status: 404,
      message:
        "ticket request: HTTP 404 NOT_FOUND (no ticket route at POST /api/v1/mesh/tickets: a wrong url or prefix, or tickets are off on the server, which mints them only when given reauthenticate; in Node, signIn: 'headers' needs no ticket)",
    });
    assert.equal(c.status, closed);
    await assert.rejects(ready, (e: MeshClientClosedError) => e instanceof MeshClientClosedError && e.status === closed);
    // Later subscriptions learn it too, rather than waiting for ever.
    await assert.rejects(c.subscribe(randomUUID()).ready, MeshClientClosedError);
    assert.ok(!seen.includes('reconnecting') && !seen.includes('open'), seen.join(' → '));
  });

  test("signIn: 'headers' (Node's ws) connects without a ticket, receives events, and stops on a revoked key", async () => {
    const { ownerId, key } = await bare.owner();
    const task = await bare.task(ownerId);
    const c = createMeshClient({ url: bare.baseUrl, apiKey: key, keyHeader: 'x-makima-api-key', signIn: 'headers', ...fast });
    clients.push(c);
    const got = collector<number>(1);
    await c.subscribe(task, (e) => got.push(e.version)).ready;
    await bare.app.mesh.taskUpdates.publish({
      taskId: task,
      ownerId,
      version: 4,
      status: 'done',
      updatedFields: ['status'],
      updatedBy: 't',
    });
    await got.complete;
    assert.deepEqual(got.values, [4]);

    await revokeApiKey(db.sql, key);
    const revoked = createMeshClient({ url: bare.baseUrl, apiKey: key, signIn: 'headers', ...fast });
    clients.push(revoked);
    assert.deepEqual(await statusWhere(revoked, (s) => s.state === 'closed'), {
      state: 'closed',
      reason: 'unauthorized',
      status: 401,
      code: 1006,
      message: 'upgrade refused: HTTP 401',
    });
    assert.throws(() => createMeshClient({ url: bare.baseUrl, protocols: async () => [], signIn: 'headers', WebSocket }), TypeError);
  });
});
