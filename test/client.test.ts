/**
 * The TypeScript client (`mesh-subscriptions/client`) against the real server: typed events and
 * per-task handlers, resume without gap or duplicate across a server restart, a revoked key
 * that stops it for good (an outage does not: test/auth-outage.test.ts), acks the server sends on
 * its own (a subscription it ended) told apart from replies, and handlers that throw kept apart.
 * The history from `start` is in test/client-history.test.ts.
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
  type HandlerError,
  type MeshClient,
  type MeshClientOptions,
  type SubscriptionEnded,
  type TaskOutput,
} from '../src/client/index.js';
import { createApiKey, revokeApiKey } from '../example/src/api-keys.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { statusWhere } from './helpers/client-status.js';
import { startServerProcess } from './helpers/process.js';
import { startTestServer, type TestServer } from './helpers/server.js';
import { tappedWebSocket } from './helpers/tapped-socket.js';
import { collector } from './helpers/collector.js';

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

test('an ack the server sends on its own ends that subscription; later replies still answer their own frames', async () => {
  const alice = await server.owner();
  const bob = await server.owner();
  const followed = await server.task(alice.ownerId);
  const [aliceOther, bobTask] = [await server.task(alice.ownerId), await server.task(bob.ownerId)];
  const tap = tappedWebSocket();
  const c = createMeshClient({ url: server.baseUrl, apiKey: alice.key, ...fast, WebSocket: tap.WebSocket });
  clients.push(c);
  const ended: SubscriptionEnded[] = [];
  const onEnded: SubscriptionEnded[] = [];
  c.on('ended', (e) => ended.push(e));
  await c.subscribeOutput(followed, undefined, { onEnded: (e) => onEnded.push(e) }).ready;
  await c.subscribe(followed).ready;

  // The key now belongs to bob: re-authentication (every 100 ms here) drops what alice's task gave.
  // The client reads nothing meanwhile, so it reads those acks with two of its own frames in flight.
  tap.hold();
  await db.sql`UPDATE api_keys SET owner_id = ${bob.ownerId} WHERE owner_id = ${alice.ownerId}`;
  await tap.arrived((f) => f.type === 'outputUnsubscribed' && f.taskId === followed);
  await tap.arrived((f) => f.type === 'unsubscribed' && f.taskId === followed);
  const refused = c.subscribe(aliceOther).ready; // no longer this key's: NOT_FOUND
  const output = collector<string>(1);
  const accepted = c.subscribeOutput(bobTask, (o) => output.push(o.content)).ready;
  await tap.arrived((f) => f.type === 'error');
  await tap.arrived((f) => f.type === 'outputSubscribed' && f.taskId === bobTask);
  tap.release();

  // Taken by position, the server's own acks would have answered these two frames: `refused`
  // would have resolved, and the error would have answered nothing.
  await assert.rejects(refused, (e: MeshSubscriptionError) => e instanceof MeshSubscriptionError && e.code === 'NOT_FOUND');
  await accepted;
  assert.deepEqual(
    [...ended].sort((a, b) => a.subscription.localeCompare(b.subscription)),
    [
      { subscription: 'subscribe', taskId: followed, reason: 'revoked' },
      { subscription: 'subscribeOutput', taskId: followed, reason: 'revoked' },
    ],
  );
  assert.deepEqual(onEnded, [{ subscription: 'subscribeOutput', taskId: followed, reason: 'revoked' }]);
  await server.app.mesh.taskOutput.publish({
    taskId: bobTask,
    ownerId: bob.ownerId,
    messageType: 'assistant',
    content: 'bob',
    isPartial: false,
  });
  await output.complete;
  assert.deepEqual(output.values, ['bob']);
  // Still aligned: a later refusal and a later acceptance, each answered as itself.
  await assert.rejects(c.subscribeOutput(followed).ready, MeshSubscriptionError);
  await c.subscribe(bobTask).ready;

  // An ended subscription is not restored: after a reconnect only bob's two are asked for again.
  const before = tap.sent.length;
  tap.drop();
  await statusWhere(c, (s) => s.state === 'reconnecting');
  await statusWhere(c, (s) => s.state === 'open');
  await c.subscribeAll().ready; // answered after the restores: all of them are in
  assert.deepEqual(
    tap.sent
      .slice(before, -1)
      .map((f) => `${f.type} ${f.taskId}`)
      .sort(),
    [`subscribe ${bobTask}`, `subscribeOutput ${bobTask}`],
  );
  c.close();
});

test("a subscription whose task moved away while the client was disconnected: its restore is refused, and it is 'ended'", async () => {
  const alice = await server.owner();
  const bob = await server.owner();
  const task = await server.task(alice.ownerId);
  const tap = tappedWebSocket();
  const c = createMeshClient({ url: server.baseUrl, apiKey: alice.key, ...fast, WebSocket: tap.WebSocket });
  clients.push(c);
  const got = collector<string>(1);
  const onEnded: SubscriptionEnded[] = [];
  await c.subscribeOutput(task, (o) => got.push(o.content), { onEnded: (e) => onEnded.push(e) }).ready;
  await server.app.mesh.taskOutput.publish({
    taskId: task,
    ownerId: alice.ownerId,
    messageType: 'assistant',
    content: 'a',
    isPartial: false,
  });
  await got.complete;
  // A live subscription outlives an owner change (what is published after it is not sent); a
  // restore asks the database again.
  await db.sql`UPDATE tasks SET owner_id = ${bob.ownerId} WHERE id = ${task}`;
  const errors: string[] = [];
  c.on('error', (e) => errors.push(e.code));
  const ended = new Promise<SubscriptionEnded>((resolve) => c.on('ended', resolve));
  tap.drop();
  assert.deepEqual(await ended, { subscription: 'subscribeOutput', taskId: task, reason: 'refused' });
  assert.deepEqual(onEnded, [{ subscription: 'subscribeOutput', taskId: task, reason: 'refused' }]);
  assert.deepEqual(errors, ['NOT_FOUND']);
  // Not asked for again after the next reconnect.
  const from = tap.sent.length;
  tap.drop();
  await statusWhere(c, (s) => s.state === 'reconnecting');
  await statusWhere(c, (s) => s.state === 'open');
  await c.subscribeAll().ready;
  assert.deepEqual(
    tap.sent.slice(from).map((f) => f.type),
    ['subscribeAll'],
  );
  c.close();
});

test('a handler that throws or rejects: reported as handlerError, the other handlers still run, the client goes on', async () => {
  const { ownerId, key } = await server.owner();
  const task = await server.task(ownerId);
  const c = client(server.baseUrl, key);
  const reported: HandlerError[] = [];
  const failures = collector<HandlerError>(6);
  c.on('handlerError', (e) => {
    reported.push(e);
    failures.push(e);
  });
  c.on('handlerError', () => {
    throw new Error('a broken error listener is not reported again');
  });
  const boom = new Error('handler broke');
  c.on('taskOutput', () => {
    throw boom;
  });
  const everything = collector<string>(2);
  c.on('taskOutput', (o) => everything.push(o.content));
  await c.subscribeOutput(task, () => {
    throw boom;
  }).ready;
  await c.subscribeOutput(task, async () => {
    throw boom;
  }).ready;
  const mine = collector<TaskOutput>(2);
  await c.subscribeOutput(task, (o) => mine.push(o)).ready;
  for (const content of ['one', 'two']) {
    await server.app.mesh.taskOutput.publish({ taskId: task, ownerId, messageType: 'assistant', content, isPartial: false });
  }
  await Promise.all([mine.complete, everything.complete, failures.complete]);
  assert.deepEqual(
    mine.values.map((o) => o.content),
    ['one', 'two'],
  );
  assert.deepEqual(everything.values, ['one', 'two']);
  // Per event: the throwing and the rejecting subscription handlers, and the throwing listener.
  assert.equal(reported.length, 6);
  assert.ok(reported.every((e) => e.error === boom));
  assert.deepEqual(reported.map((e) => [JSON.stringify(e.handler), (e.event as TaskOutput).content]).sort(), [
    [JSON.stringify({ on: 'taskOutput' }), 'one'],
    [JSON.stringify({ on: 'taskOutput' }), 'two'],
    [JSON.stringify({ subscription: 'subscribeOutput', taskId: task }), 'one'],
    [JSON.stringify({ subscription: 'subscribeOutput', taskId: task }), 'one'],
    [JSON.stringify({ subscription: 'subscribeOutput', taskId: task }), 'two'],
    [JSON.stringify({ subscription: 'subscribeOutput', taskId: task }), 'two'],
  ]);
  assert.equal(c.status.state, 'open');
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
