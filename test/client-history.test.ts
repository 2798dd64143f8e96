/**
 * The package client's `from: 'start'` against the real server and PostgreSQL: a task's whole
 * retained stream then live, once and in order, while the task keeps streaming; the
 * `historyTruncated` marker; what a reconnect asks for; and a history the server ends because the
 * task's owner changed (the client's `ended`).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import {
  createMeshClient,
  MeshSubscriptionError,
  type HistoryTruncated,
  type MeshClient,
  type MeshClientOptions,
  type SubscriptionEnded,
  type TaskOutput,
} from '../src/client/index.js';
import { statusWhere } from './helpers/client-status.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { startTestServer, type TestServer } from './helpers/server.js';
import { tappedWebSocket, type Tap } from './helpers/tapped-socket.js';
import { collector } from './helpers/collector.js';

let db: TestDatabase;
let server: TestServer;
let capped: TestServer;
before(async () => {
  db = await createTestDatabase();
  // Small pages (backpressure.soft / 2): a long history takes many of them.
  server = await startTestServer({ db, mesh: { backpressure: { soft: 64 * 1024 } } });
  // One replay sends at most 10 events: a longer history is cut, and says so.
  capped = await startTestServer({ db, mesh: { replay: { maxEvents: 10 } } });
});
after(async () => {
  await server.close();
  await capped.close();
  await db.drop();
});

const fast: Partial<MeshClientOptions> = { WebSocket, initialDelayMs: 20, maxDelayMs: 200 };
const clients: MeshClient[] = [];
function client(on: TestServer, apiKey: string, tap?: Tap): MeshClient {
  const c = createMeshClient({ url: on.baseUrl, apiKey, ...fast, ...(tap ? { WebSocket: tap.WebSocket } : {}) });
  clients.push(c);
  return c;
}
after(() => clients.forEach((c) => c.close()));

/** `count` outputs `<prefix><n>` (padded with `bytes` dots), logged in one statement through the SQL function. */
async function logOutputs(taskId: string, prefix: string, count: number, bytes = 0): Promise<void> {
  await db.sql`
    SELECT mesh_publish_task_output(${taskId}::uuid, NULL, 'assistant', ${prefix} || n || repeat('.', ${bytes}),
                                    NULL, NULL, NULL, NULL, NULL, false)
    FROM generate_series(0, ${count - 1}) AS n ORDER BY n`;
}
const range = (prefix: string, from: number, to: number) => Array.from({ length: to - from }, (_, i) => `${prefix}${from + i}`);
const text = (o: TaskOutput) => o.content.replace(/\.+$/, '');

test('from start: the whole output history then live, each once and in order, while the task keeps streaming', async () => {
  const { ownerId, key } = await server.owner();
  const task = await server.task(ownerId);
  await logOutputs(task, 'h', 2_000, 100);
  const tap = tappedWebSocket();
  const c = client(server, key, tap);
  const got = collector<string>(2_100);
  const subscription = c.subscribeOutput(task, (o) => got.push(text(o)), { from: 'start' });
  // Live output goes on while the history pages are read.
  for (let n = 0; n < 100; n++) {
    await server.app.mesh.taskOutput.publish({ taskId: task, ownerId, messageType: 'assistant', content: `l${n}`, isPartial: false });
  }
  await subscription.ready;
  await got.complete;
  assert.deepEqual(tap.sent[0], { type: 'subscribeOutput', taskId: task, since: 'start' });
  assert.equal(got.values.length, 2_100);
  assert.deepEqual(got.values, [...range('h', 0, 2_000), ...range('l', 0, 100)]);
  assert.ok(!tap.received.some((f) => f.type === 'historyTruncated' || f.type === 'resyncRequired'));

  // Opened again (as a page does when a task is reopened): the history again, though this client
  // had every one of those events already.
  subscription.unsubscribe();
  const again = collector<string>(2_100);
  c.subscribeOutput(task, (o) => again.push(text(o)), { from: 'start' });
  await again.complete;
  assert.deepEqual(again.values, got.values);
  c.close();
});

test("a task's updates from start, beside a subscribeAll that had some of them: each handler gets each event once, the history in order", async (t) => {
  const { ownerId, key } = await server.owner();
  const task = await server.task(ownerId);
  const update = (version: number) =>
    server.app.mesh.taskUpdates.publish({ taskId: task, ownerId, version, status: 'running', updatedFields: ['status'], updatedBy: 't' });
  await update(1);
  const c = client(server, key);
  const all = collector<number>(4);
  const events = collector<number>(4);
  c.on('taskUpdated', (e) => events.push(e.version));
  await c.subscribeAll((e) => all.push(e.version)).ready;
  await update(2);
  await update(3);
  const history = collector<number>(4);
  await c.subscribe(task, (e) => history.push(e.version), { from: 'start' }).ready;
  await update(4);
  await Promise.all([all.complete, events.complete, history.complete]);
  // Each handler gets each event once, whichever of the socket's subscriptions carried it; the
  // task's live updates wait for its replay, so its history arrives in log order.
  const sorted = (values: number[]) => [...values].sort((x, y) => x - y);
  assert.deepEqual(history.values, [1, 2, 3, 4], 'the whole history and live, each once, in order');
  assert.deepEqual(sorted(all.values), [1, 2, 3, 4], 'subscribeAll got no repeat (1, which it never had, came with the replay)');
  assert.deepEqual(sorted(events.values), [1, 2, 3, 4], 'the client event fires once per event');
  t.diagnostic(`order: history ${history.values.join(',')}; subscribeAll ${all.values.join(',')}`);
  c.close();
});

test('historyTruncated: onTruncated and the client event, before the first replayed event; then the newest maxReplay events', async () => {
  const { ownerId, key } = await capped.owner();
  const task = await capped.task(ownerId);
  await logOutputs(task, 'n', 15);
  const c = client(capped, key);
  const order: string[] = [];
  const markers: HistoryTruncated[] = [];
  c.on('historyTruncated', (m) => markers.push(m));
  const got = collector<string>(11);
  const push = (entry: string) => {
    order.push(entry);
    got.push(entry);
  };
  await c.subscribeOutput(task, (o) => push(text(o)), {
    from: 'start',
    onTruncated: (m) => push(`truncated:${m.reason}`),
  }).ready;
  await got.complete;
  assert.deepEqual(order, ['truncated:maxReplay', ...range('n', 5, 15)]);
  assert.deepEqual(markers, [{ type: 'historyTruncated', subscription: 'subscribeOutput', taskId: task, reason: 'maxReplay' }]);
  c.close();
});

test('a reconnect: a history that delivered nothing yet asks for start again; one that did resumes after its last event', async () => {
  const { ownerId, key } = await server.owner();
  const task = await server.task(ownerId);
  const tap = tappedWebSocket();
  const c = client(server, key, tap);
  const got = collector<string>(2);
  await c.subscribeOutput(task, (o) => got.push(o.content), { from: 'start' }).ready;
  assert.deepEqual(tap.sent.at(-1), { type: 'subscribeOutput', taskId: task, since: 'start' });

  const reconnected = async () => {
    const from = tap.sent.length;
    tap.drop();
    await statusWhere(c, (s) => s.state === 'reconnecting');
    return tap.sends((f) => f.type === 'subscribeOutput', from);
  };
  assert.deepEqual(await reconnected(), { type: 'subscribeOutput', taskId: task, since: 'start' });
  await statusWhere(c, (s) => s.state === 'open');
  await db.sql`SELECT mesh_publish_task_output(${task}::uuid, NULL, 'assistant', 'a', NULL, NULL, NULL, NULL, NULL, false)`;
  const a = await tap.arrived((f) => f.type === 'taskOutput' && f.content === 'a');

  // Logged through SQL, so it goes on whether or not the client is connected just then.
  const restore = reconnected();
  await db.sql`SELECT mesh_publish_task_output(${task}::uuid, NULL, 'assistant', 'b', NULL, NULL, NULL, NULL, NULL, false)`;
  assert.deepEqual(await restore, { type: 'subscribeOutput', taskId: task, since: a.cursor });
  await got.complete;
  await db.sql`SELECT mesh_publish_task_output(${task}::uuid, NULL, 'assistant', 'c', NULL, NULL, NULL, NULL, NULL, false)`;
  await tap.arrived((f) => f.type === 'taskOutput' && f.content === 'c');
  assert.deepEqual(got.values, ['a', 'b', 'c'], 'no gap, no duplicate, and no history again');
  c.close();
});

test("the task's owner changes during its history: the server ends it, the client says `ended` and stops following it", async () => {
  const old = await server.owner();
  const next = await server.owner();
  const task = await server.task(old.ownerId);
  const other = await server.task(old.ownerId);
  // 16 MB: more than the loopback's socket buffers hold, so the replay waits for its reader.
  await logOutputs(task, 'h', 4_000, 4_000);
  const tap = tappedWebSocket();
  const c = client(server, old.key, tap);
  const ended: SubscriptionEnded[] = [];
  c.on('ended', (e) => ended.push(e));
  const got: string[] = [];
  let hundred!: () => void;
  const hundredIn = new Promise<void>((resolve) => (hundred = resolve));
  let told!: (e: SubscriptionEnded) => void;
  const onEnded = new Promise<SubscriptionEnded>((resolve) => (told = resolve));
  await c.subscribeOutput(
    task,
    (o) => {
      got.push(text(o));
      if (got.length === 100) hundred();
    },
    { from: 'start', onEnded: told },
  ).ready;
  await hundredIn;
  tap.pauseReading();
  await db.sql`UPDATE tasks SET owner_id = ${next.ownerId} WHERE id = ${task}`;
  tap.resumeReading();
  assert.deepEqual(await onEnded, { subscription: 'subscribeOutput', taskId: task, reason: 'revoked' });
  assert.deepEqual(ended, [{ subscription: 'subscribeOutput', taskId: task, reason: 'revoked' }]);
  assert.ok(got.length < 4_000, `the history stopped (${got.length} of 4,000 delivered)`);
  assert.deepEqual(got, range('h', 0, got.length), 'what came is the history from its start, gapless');

  // Replies still answer their own frames, and the ended subscription is not asked for again.
  await assert.rejects(
    c.subscribeOutput(task).ready,
    (e: MeshSubscriptionError) => e instanceof MeshSubscriptionError && e.code === 'NOT_FOUND',
  );
  await c.subscribe(other).ready;
  const from = tap.sent.length;
  tap.drop();
  await statusWhere(c, (s) => s.state === 'reconnecting');
  await statusWhere(c, (s) => s.state === 'open');
  await c.subscribeAll().ready;
  assert.deepEqual(
    tap.sent.slice(from).map((f) => `${f.type} ${f.taskId ?? ''}`),
    [`subscribe ${other}`, 'subscribeAll '],
  );
  c.close();
});
