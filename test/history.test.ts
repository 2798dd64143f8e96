/**
 * A task's whole transcript, history then live, in one subscription (`"since":"start"`): across
 * pages and two instances while the task keeps streaming, with its pruned past announced
 * (`historyTruncated`), kept per task however busy other tasks are, and shown only to whoever may
 * see the task now — an owner change between history and live included.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { startTestServer, type TestServer } from './helpers/server.js';
import type { Frame } from './helpers/ws-client.js';

let db: TestDatabase;
let a: TestServer;
let b: TestServer;
before(async () => {
  db = await createTestDatabase();
  a = await startTestServer({ db, mesh: { bus: 'postgres' } });
  // Small pages (backpressure.soft / 2): a long history takes many of them.
  b = await startTestServer({ db, mesh: { bus: 'postgres', backpressure: { soft: 64 * 1024 } } });
});
after(async () => {
  await a.close();
  await b.close();
  await db.drop();
});

const output = (taskId: string, content: string) => ({ taskId, messageType: 'assistant', content, isPartial: false });

/** `count` outputs `<prefix><n>` of `bytes` bytes each, logged in one statement through the SQL function. */
async function logOutputs(sql: TestDatabase['sql'], taskId: string, prefix: string, count: number, bytes = 0): Promise<void> {
  await sql`
    SELECT mesh_publish_task_output(${taskId}::uuid, NULL, 'assistant', ${prefix} || n || repeat('.', ${bytes}),
                                    NULL, NULL, NULL, NULL, NULL, false)
    FROM generate_series(0, ${count - 1}) AS n ORDER BY n`;
}

const contents = (frames: Frame[]) => frames.filter((f) => f.type === 'taskOutput').map((f) => String(f.content).replace(/\.+$/, ''));
const range = (prefix: string, from: number, to: number) => Array.from({ length: to - from }, (_, i) => `${prefix}${from + i}`);

describe('history then live', () => {
  test('on another instance, across pages, while the task keeps streaming: every event once, in order', async () => {
    const owner = await a.owner();
    const taskId = await a.task(owner.ownerId);
    await logOutputs(db.sql, taskId, 'h', 1_200, 200);
    const client = await b.connect(owner.key);
    client.send({ type: 'subscribeOutput', taskId, since: 'start' });
    // Published on the other instance during the replay, through the JS API.
    for (let n = 0; n < 300; n++) await a.app.mesh.taskOutput.publish(output(taskId, `l${n}`));
    await a.app.mesh.taskOutput.publish(output(taskId, 'end'));
    const frames = await client.until((f) => f.content === 'end');
    assert.deepEqual(frames[0], { type: 'outputSubscribed', taskId });
    assert.deepEqual(contents(frames), [...range('h', 0, 1_200), ...range('l', 0, 300), 'end']);
    assert.equal(new Set(frames.map((f) => f.cursor)).size, frames.length, 'no cursor twice');
    assert.ok(!frames.some((f) => f.type === 'historyTruncated'));
  });

  test('task updates too, and an empty history goes live at once', async () => {
    const owner = await a.owner();
    const taskId = await a.task(owner.ownerId);
    const empty = await a.task(owner.ownerId);
    for (let version = 1; version <= 3; version++)
      await a.app.mesh.taskUpdates.publish({ taskId, version, status: 'running', updatedFields: ['status'], updatedBy: 't' });
    const client = await b.connect(owner.key);
    client.send({ type: 'subscribe', taskId, since: 'start' });
    client.send({ type: 'subscribeOutput', taskId: empty, since: 'start' });
    await a.app.mesh.taskUpdates.publish({ taskId, version: 4, status: 'done', updatedFields: ['status'], updatedBy: 't' });
    await a.app.mesh.taskOutput.publish(output(empty, 'first'));
    const frames = await client.until((f) => f.content === 'first');
    // The ack of the second subscribe comes between the replayed updates and live ones, or after them.
    assert.deepEqual(
      frames.filter((f) => f.type === 'taskUpdated').map((f) => f.version),
      [1, 2, 3, 4],
    );
    assert.equal(frames.filter((f) => f.type === 'taskOutput').length, 1);
  });

  test('the iOS flow is unchanged: no since, no history, no new frame', async () => {
    const owner = await a.owner();
    const taskId = await a.task(owner.ownerId);
    await logOutputs(db.sql, taskId, 'old', 3);
    const client = await b.connect(owner.key);
    assert.deepEqual(await client.request({ type: 'subscribeOutput', taskId }), { type: 'outputSubscribed', taskId });
    await a.app.mesh.taskOutput.publish(output(taskId, 'new'));
    const frame = await client.next();
    assert.equal(frame.content, 'new');
  });

  test('hostile content in a history (NUL, quotes, deep JSON, 1 MB) comes back exactly as it went out live', async () => {
    const owner = await a.owner();
    const taskId = await a.task(owner.ownerId);
    const deep = JSON.parse(`${'{"d":'.repeat(60)}"\\u0000"${'}'.repeat(60)}`);
    const live = await a.connect(owner.key);
    await live.request({ type: 'subscribeOutput', taskId });
    const sent = [
      { ...output(taskId, 'nul \u0000 and "quotes" and \\ and \u2028'), toolName: 'Bash', toolInput: deep },
      output(taskId, 'x'.repeat(1024 * 1024)),
    ];
    for (const o of sent) await a.app.mesh.taskOutput.publish(o);
    const liveFrames = [await live.next(), await live.next()];
    const client = await b.connect(owner.key);
    client.send({ type: 'subscribeOutput', taskId, since: 'start' });
    const replayed = await client.until((f) => f.cursor === liveFrames[1]!.cursor);
    assert.deepEqual(replayed.slice(1), liveFrames);
  });

  test('"since": "start" on subscribeAll is refused with PARSE_ERROR, and the socket goes on', async () => {
    const owner = await a.owner();
    const client = await a.connect(owner.key);
    const refused = await client.request({ type: 'subscribeAll', since: 'start' });
    assert.equal(refused.type, 'error');
    assert.equal(refused.code, 'PARSE_ERROR');
    assert.equal((await client.request({ type: 'subscribeAll' })).type, 'subscribedAll');
  });
});

describe('who sees history', () => {
  test('the current owner sees history logged under the previous owner; the previous owner sees none of it, on any instance', async () => {
    const old = await a.owner();
    const next = await a.owner();
    const taskId = await a.task(old.ownerId);
    await logOutputs(db.sql, taskId, 'before', 5);
    await db.sql`UPDATE tasks SET owner_id = ${next.ownerId} WHERE id = ${taskId}`;
    await logOutputs(db.sql, taskId, 'after', 2);
    for (const server of [a, b]) {
      const newClient = await server.connect(next.key);
      assert.equal((await newClient.request({ type: 'subscribeOutput', taskId, since: 'start' })).type, 'outputSubscribed');
      const got = await newClient.until((f) => f.content === 'after1');
      assert.deepEqual(contents(got), [...range('before', 0, 5), ...range('after', 0, 2)]);
      const oldClient = await server.connect(old.key);
      assert.equal((await oldClient.request({ type: 'subscribeOutput', taskId, since: 'start' })).code, 'NOT_FOUND');
      assert.equal((await oldClient.request({ type: 'subscribe', taskId, since: 'start' })).code, 'NOT_FOUND');
    }
    const admin = await b.admin();
    const adminClient = await b.connect(admin.key);
    await adminClient.request({ type: 'subscribeOutput', taskId, since: 'start' });
    assert.deepEqual(contents(await adminClient.until((f) => f.content === 'after1')), [...range('before', 0, 5), ...range('after', 0, 2)]);
  });

  test('an owner change between history and live: the previous owner gets nothing after it, the new one the whole transcript', async () => {
    const old = await a.owner();
    const next = await a.owner();
    const taskId = await a.task(old.ownerId);
    const marker = await a.task(old.ownerId);
    await logOutputs(db.sql, taskId, 'h', 3);
    const oldClient = await b.connect(old.key);
    oldClient.send({ type: 'subscribeOutput', taskId, since: 'start' });
    oldClient.send({ type: 'subscribe', taskId: marker });
    await a.app.mesh.taskOutput.publish(output(taskId, 'live-before'));
    assert.deepEqual(contents(await oldClient.until((f) => f.content === 'live-before')), [...range('h', 0, 3), 'live-before']);
    await db.sql`UPDATE tasks SET owner_id = ${next.ownerId} WHERE id = ${taskId}`;
    await a.app.mesh.taskOutput.publish(output(taskId, 'live-after'));
    await logOutputs(db.sql, taskId, 'sql-after', 1);
    await a.app.mesh.taskUpdates.publish({ taskId: marker, version: 1, status: 'x', updatedFields: [], updatedBy: 't' });
    const seen = await oldClient.until((f) => f.taskId === marker && f.type === 'taskUpdated');
    assert.deepEqual(
      seen.filter((f) => f.taskId === taskId),
      [],
      'nothing of the task after the change',
    );
    const newClient = await a.connect(next.key);
    newClient.send({ type: 'subscribeOutput', taskId, since: 'start' });
    assert.deepEqual(contents(await newClient.until((f) => f.content === 'sql-after0')), [
      ...range('h', 0, 3),
      'live-before',
      'live-after',
      'sql-after0',
    ]);
  });

  test('an owner change during the replay ends it for the previous owner: the rest is not sent, nor anything live', async () => {
    const old = await b.owner();
    const next = await b.owner();
    const taskId = await b.task(old.ownerId);
    const marker = await b.task(old.ownerId);
    // 16 MB: more than the loopback's socket buffers hold, so the replay waits for the reader.
    await logOutputs(db.sql, taskId, 'h', 4_000, 4_000);
    const client = await b.connect(old.key);
    assert.equal((await client.request({ type: 'subscribe', taskId: marker })).type, 'subscribed');
    client.send({ type: 'subscribeOutput', taskId, since: 'start' });
    const first = await client.until((f) => f.content === 'h99' + '.'.repeat(4_000));
    client.socket.pause();
    await db.sql`UPDATE tasks SET owner_id = ${next.ownerId} WHERE id = ${taskId}`;
    await logOutputs(db.sql, taskId, 'secret', 1);
    await b.app.mesh.taskUpdates.publish({ taskId: marker, version: 1, status: 'x', updatedFields: [], updatedBy: 't' });
    client.socket.resume();
    // Until the replay's end (its unsolicited ack; or its last event, should it all have gone out)
    // and the marker's update, in whichever order the socket's backlog lets them come.
    let ended = false;
    let marked = false;
    const rest = await client.until((f) => {
      ended ||= f.type === 'outputUnsubscribed';
      marked ||= f.type === 'taskUpdated' && f.taskId === marker;
      return marked && (ended || String(f.content).startsWith('h3999.'));
    });
    assert.ok(ended, 'the replay ended with an unsolicited outputUnsubscribed');
    const history = contents([...first, ...rest]);
    assert.ok(history.length < 4_000, `the replay stopped (${history.length} of 4,000 sent)`);
    assert.deepEqual(history, range('h', 0, history.length), 'what was sent is the history from its start, gapless, nothing live');
    const after = rest.slice(rest.findIndex((f) => f.type === 'outputUnsubscribed') + 1);
    assert.deepEqual(
      after.filter((f) => f.taskId === taskId),
      [],
      'nothing of the moved task after the unsubscribe',
    );
  });
});

describe('retention and the start of a history', () => {
  let own: TestDatabase;
  let pruning: TestServer;
  before(async () => {
    own = await createTestDatabase();
    pruning = await startTestServer({
      db: own,
      mesh: { bus: 'postgres', postgres: { retentionPerTask: 50, retentionMs: 60 * 60 * 1000, pruneIntervalMs: 50 } },
    });
  });
  after(async () => {
    await pruning.close();
    await own.drop();
  });
  /** Once pruning rounds (every 50 ms) have left `left` of a task's events; another round may come meanwhile. */
  const prunedTo = async (taskId: string, left: number) => {
    for (;;) {
      const round = once(pruning.app.mesh.events, 'pruned');
      const [row] = await own.sql<{ n: number }[]>`SELECT count(*)::int AS n FROM mesh_event_log WHERE task_id = ${taskId}::uuid`;
      if (row!.n === left) return;
      await round;
    }
  };

  test('a quiet task keeps its history beside a noisy one; the noisy one says its history is truncated', async () => {
    const owner = await pruning.owner();
    const quiet = await pruning.task(owner.ownerId);
    const noisy = await pruning.task(owner.ownerId);
    await logOutputs(own.sql, quiet, 'q', 5);
    await logOutputs(own.sql, noisy, 'n', 2_000);
    await prunedTo(noisy, 50);
    const client = await pruning.connect(owner.key);
    await client.request({ type: 'subscribeOutput', taskId: quiet, since: 'start' });
    await pruning.app.mesh.taskOutput.publish(output(quiet, 'live'));
    const frames = await client.until((f) => f.content === 'live');
    assert.deepEqual(
      frames.map((f) => f.type),
      Array(6).fill('taskOutput'),
    );
    assert.deepEqual(contents(frames), [...range('q', 0, 5), 'live']);

    await client.request({ type: 'subscribeOutput', taskId: noisy, since: 'start' });
    const truncated = await client.next();
    assert.deepEqual(truncated, { type: 'historyTruncated', subscription: 'subscribeOutput', taskId: noisy, reason: 'retention' });
    await pruning.app.mesh.taskOutput.publish(output(noisy, 'live'));
    assert.deepEqual(contents(await client.until((f) => f.content === 'live')), [...range('n', 1_950, 2_000), 'live']);
  });

  test('pruned by age: the task is marked, and its history says so; a task with nothing pruned does not', async () => {
    const owner = await pruning.owner();
    const aged = await pruning.task(owner.ownerId);
    const young = await pruning.task(owner.ownerId);
    await logOutputs(own.sql, aged, 'a', 10);
    await logOutputs(own.sql, young, 'y', 3);
    await own.sql`UPDATE mesh_event_log SET created_at = now() - interval '2 hours'
                  WHERE task_id = ${aged}::uuid AND payload->>'content' IN ('a0', 'a1', 'a2')`;
    await prunedTo(aged, 7);
    const client = await pruning.connect(owner.key);
    client.send({ type: 'subscribeOutput', taskId: aged, since: 'start' });
    client.send({ type: 'subscribeOutput', taskId: young, since: 'start' });
    await pruning.app.mesh.taskOutput.publish(output(young, 'live'));
    const frames = await client.until((f) => f.content === 'live');
    const ofAged = frames.filter((f) => f.taskId === aged && f.type !== 'outputSubscribed');
    assert.deepEqual(ofAged[0], { type: 'historyTruncated', subscription: 'subscribeOutput', taskId: aged, reason: 'retention' });
    assert.deepEqual(contents(ofAged), range('a', 3, 10));
    const ofYoung = frames.filter((f) => f.taskId === young && f.type !== 'outputSubscribed');
    assert.deepEqual(contents(ofYoung), [...range('y', 0, 3), 'live']);
    assert.equal(ofYoung.length, 4, 'no marker for a history that is whole');
  });
});

describe('the memory bus', () => {
  let memory: TestServer;
  before(async () => {
    memory = await startTestServer({ mesh: { bus: 'memory', replay: { historySize: 40, maxEvents: 10 } } });
  });
  after(() => memory.close());

  test('history from start, the newest maxEvents past it (maxReplay), and what the ring lost (retention)', async () => {
    const owner = await memory.owner();
    const [whole, long, lost] = [await memory.task(owner.ownerId), await memory.task(owner.ownerId), await memory.task(owner.ownerId)];
    for (let n = 0; n < 5; n++) await memory.app.mesh.taskOutput.publish(output(lost, `x${n}`));
    for (let n = 0; n < 31; n++) await memory.app.mesh.taskOutput.publish(output(long, `l${n}`));
    for (let n = 0; n < 5; n++) await memory.app.mesh.taskOutput.publish(output(whole, `w${n}`));
    const client = await memory.connect(owner.key);
    await client.request({ type: 'subscribeOutput', taskId: whole, since: 'start' });
    assert.deepEqual(contents(await client.until((f) => f.content === 'w4')), range('w', 0, 5));
    await client.request({ type: 'subscribeOutput', taskId: long, since: 'start' });
    const ofLong = await client.until((f) => f.content === 'l30');
    assert.deepEqual(ofLong[0], { type: 'historyTruncated', subscription: 'subscribeOutput', taskId: long, reason: 'maxReplay' });
    assert.deepEqual(contents(ofLong), range('l', 21, 31));
    // The ring holds 40 of the 41 events: the first of `lost`'s 5 is gone.
    await client.request({ type: 'subscribeOutput', taskId: lost, since: 'start' });
    await memory.app.mesh.taskOutput.publish(output(lost, 'live'));
    const ofLost = await client.until((f) => f.content === 'live');
    assert.deepEqual(ofLost[0], { type: 'historyTruncated', subscription: 'subscribeOutput', taskId: lost, reason: 'retention' });
    assert.deepEqual(contents(ofLost), [...range('x', 1, 5), 'live']);
  });
});
