/**
 * The PostgreSQL bus with several instances on one database (each a full app in this process,
 * with its own LISTEN connection and reader): delivery across instances, the outbox, the
 * late-commit gap, a killed LISTEN backend, publishing from SQL, resume and retention.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { startTestServer, type TestServer } from './helpers/server.js';
import type { Frame, TestClient } from './helpers/ws-client.js';

let db: TestDatabase;
let a: TestServer;
let b: TestServer;
before(async () => {
  db = await createTestDatabase();
  a = await startTestServer({ db, mesh: { bus: 'postgres' } });
  b = await startTestServer({ db, mesh: { bus: 'postgres' } });
});
after(async () => {
  await a.close();
  await b.close();
  await db.drop();
});

const update = (taskId: string, ownerId: string | null, version: number) => ({
  taskId,
  ownerId,
  version,
  status: 'running',
  updatedFields: ['status'],
  updatedBy: 'test',
});

/** The next `count` frames of a client. */
async function take(client: TestClient, count: number): Promise<Frame[]> {
  const frames: Frame[] = [];
  for (let i = 0; i < count; i++) frames.push(await client.next());
  return frames;
}

const versions = (frames: Frame[]) => frames.map((f) => f.version);

/** Resolves once `done()` holds, re-checking after each pruning round of `server` (no round is missed). */
async function prunedUntil(server: TestServer, done: () => Promise<boolean>): Promise<void> {
  for (;;) {
    const next = once(server.app.mesh.events, 'pruned');
    if (await done()) return;
    await next;
  }
}

describe('across instances', () => {
  test('an event published on A reaches the subscribers of B, with its cursor', async () => {
    const { ownerId, key } = await b.owner();
    const taskId = await a.task(ownerId);
    const client = await b.connect(key);
    await client.request({ type: 'subscribe', taskId });
    const cursor = await a.app.mesh.taskUpdates.publish(update(taskId, ownerId, 1));
    assert.deepEqual(await client.next(), {
      type: 'taskUpdated',
      taskId,
      version: 1,
      status: 'running',
      updatedFields: ['status'],
      updatedBy: 'test',
      cursor,
    });
    await client.close();
  });

  test('a 1 MiB output chunk arrives intact (NOTIFY carries no payload)', async () => {
    const { ownerId, key } = await b.owner();
    const taskId = await a.task(ownerId);
    const client = await b.connect(key);
    await client.request({ type: 'subscribeOutput', taskId });
    const content = 'é'.repeat(256 * 1024) + 'x'.repeat(512 * 1024);
    await a.app.mesh.taskOutput.publish({ taskId, ownerId, messageType: 'assistant', content, isPartial: false });
    const frame = await client.next();
    assert.equal(frame.content, content);
    assert.equal(Buffer.byteLength(String(frame.content)), 1024 * 1024);
    await client.close();
  });
});

describe('transactions', () => {
  test('publish in a rolled-back transaction delivers nothing; in a committed one, once it commits', async () => {
    const { ownerId, key } = await a.owner();
    const taskId = await a.task(ownerId);
    const client = await b.connect(key);
    await client.request({ type: 'subscribe', taskId });
    await assert.rejects(
      db.sql.begin(async (tx) => {
        await a.app.mesh.taskUpdates.publish(update(taskId, ownerId, 1), { sql: tx });
        throw new Error('roll back');
      }),
      /roll back/,
    );
    await db.sql.begin(async (tx) => {
      await a.app.mesh.taskUpdates.publish(update(taskId, ownerId, 2), { sql: tx });
    });
    await a.app.mesh.taskUpdates.publish(update(taskId, ownerId, 3));
    assert.deepEqual(versions(await take(client, 2)), [2, 3]);
    await client.close();
  });

  test('a transaction that commits after a later publish is not skipped, and comes first', { timeout: 20_000 }, async () => {
    const { ownerId, key } = await a.owner();
    const taskId = await a.task(ownerId);
    const client = await b.connect(key);
    await client.request({ type: 'subscribe', taskId });
    let commit!: () => void;
    const gate = new Promise<void>((resolve) => (commit = resolve));
    let written!: () => void;
    const inTransaction = new Promise<void>((resolve) => (written = resolve));
    // Version 1 is written first (its row gets the lower id) but commits last.
    const slow = db.sql.begin(async (tx) => {
      await a.app.mesh.taskUpdates.publish(update(taskId, ownerId, 1), { sql: tx });
      written();
      await gate;
    });
    await inTransaction;
    const heldBack = once(b.app.mesh.events, 'heldBack');
    await db.sql`SELECT mesh_publish_task_update(${taskId}::uuid, ${ownerId}::uuid, 2, 'running', ARRAY['status'], 'sql')`;
    // Version 2 is committed and NOTIFY'd; B's reader has seen it and must hold it back while
    // version 1 may still come (a reader that took it would move past version 1 for good).
    await heldBack;
    await a.app.mesh.taskUpdates.publish(update(taskId, ownerId, 3));
    commit();
    await slow;
    assert.deepEqual(versions(await take(client, 3)), [1, 2, 3]);
    await client.close();
  });

  test('publish with { sql } on the memory bus is refused at once', async () => {
    const memory = await startTestServer({ db, mesh: { bus: 'memory' } });
    const taskId = await memory.task(null);
    await db.sql.begin(async (tx) => {
      assert.throws(() => memory.app.mesh.taskUpdates.publish(update(taskId, null, 1), { sql: tx }), /bus: "postgres"/);
    });
    await memory.close();
  });
});

describe('publishing from SQL', () => {
  test('the SQL functions publish with no Node code in the path; NULL owner is looked up, NULL fields are absent', async () => {
    const { ownerId, key } = await a.owner();
    const taskId = await a.task(ownerId);
    const client = await b.connect(key);
    await client.request({ type: 'subscribe', taskId });
    await client.request({ type: 'subscribeOutput', taskId });
    const [u] = await db.sql<{ cursor: string }[]>`
      SELECT mesh_publish_task_update(${taskId}::uuid, NULL, 7, 'done', ARRAY['status', 'name'], 'worker') AS cursor`;
    const [o] = await db.sql<{ cursor: string }[]>`
      SELECT mesh_publish_task_output(${taskId}::uuid, ${ownerId}::uuid, 'tool_use', 'ls', 'bash', '{"cmd":"ls -la"}'::jsonb, NULL, NULL, NULL, NULL) AS cursor`;
    assert.deepEqual(await client.next(), {
      type: 'taskUpdated',
      taskId,
      version: 7,
      status: 'done',
      updatedFields: ['status', 'name'],
      updatedBy: 'worker',
      cursor: u!.cursor,
    });
    assert.deepEqual(await client.next(), {
      type: 'taskOutput',
      taskId,
      messageType: 'tool_use',
      content: 'ls',
      toolName: 'bash',
      toolInput: { cmd: 'ls -la' },
      isPartial: false,
      cursor: o!.cursor,
    });
    await client.close();
  });

  test('a NULL where a value is required, or a cost that is not finite, is refused with a clear error', async () => {
    const taskId = await a.task(null);
    await assert.rejects(
      db.sql`SELECT mesh_publish_task_update(${taskId}::uuid, NULL, NULL, 'x', NULL, 'y')`,
      /version, status and updated_by are required/,
    );
    await assert.rejects(
      db.sql`SELECT mesh_publish_task_output(NULL, NULL, 'assistant', 'x', NULL, NULL, NULL, NULL, NULL, NULL)`,
      /are required/,
    );
    await assert.rejects(
      db.sql`SELECT mesh_publish_task_output(${taskId}::uuid, NULL, 'result', 'x', NULL, NULL, NULL, 'NaN'::float8, NULL, NULL)`,
      /cost_usd must be a finite number/,
    );
  });
});

test('the LISTEN backend killed mid-stream: no gap, no duplicate', async () => {
  const admin = await b.admin();
  const taskId = await a.task(null);
  const client = await b.connect(admin.key);
  await client.request({ type: 'subscribe', taskId });
  const total = 300;
  const publishing = (async () => {
    for (let v = 1; v <= total; v++) {
      await a.app.mesh.taskUpdates.publish(update(taskId, null, v));
      if (v % 50 === 0) {
        // Every instance's LISTEN connection, mid-stream.
        await db.sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'listen%'`;
      }
    }
  })();
  const got = versions(await take(client, total));
  await publishing;
  assert.deepEqual(
    got,
    Array.from({ length: total }, (_, i) => i + 1),
  );
  assert.equal(client.pending.length, 0);
  await client.close();
});

test(
  'a lost wake-up costs latency, not the event: the periodic read delivers a row that came with no NOTIFY',
  { timeout: 20_000 },
  async () => {
    const polling = await startTestServer({ db, mesh: { bus: 'postgres', pollIntervalMs: 100 } });
    const admin = await polling.admin();
    const taskId = await a.task(null);
    const client = await polling.connect(admin.key);
    await client.request({ type: 'subscribe', taskId });
    // Written as the SQL functions write, minus their pg_notify: no instance is woken.
    await db.sql`
    INSERT INTO mesh_event_log (kind, task_id, owner_id, owner_given, payload)
    VALUES ('update', ${taskId}::uuid, NULL, true, ${db.sql.json({ version: 7, status: 'running', updatedFields: ['status'], updatedBy: 'sql' })})`;
    const frame = await client.next();
    assert.deepEqual([frame.type, frame.taskId, frame.version], ['taskUpdated', taskId, 7]);
    await client.close();
    await polling.close();
  },
);

describe('resume', () => {
  for (const [subscription, follow] of [
    ['subscribe', (taskId: string) => ({ type: 'subscribe', taskId })],
    ['subscribeOutput', (taskId: string) => ({ type: 'subscribeOutput', taskId })],
    ['subscribeAll', () => ({ type: 'subscribeAll' })],
  ] as const) {
    test(`${subscription} with since, after a disconnect, on another instance, while publishing goes on: no gap, no duplicate`, async () => {
      const { ownerId, key } = await a.owner();
      const taskId = await a.task(ownerId);
      const publish = (n: number) =>
        subscription === 'subscribeOutput'
          ? a.app.mesh.taskOutput.publish({ taskId, ownerId, messageType: 'assistant', content: String(n), isPartial: false })
          : a.app.mesh.taskUpdates.publish(update(taskId, ownerId, n));
      const seq = (f: Frame) => Number(subscription === 'subscribeOutput' ? f.content : f.version);
      const first = await a.connect(key);
      await first.request(follow(taskId));
      for (let n = 1; n <= 10; n++) await publish(n);
      const before = await take(first, 10);
      await first.close();
      const total = 200;
      // Publishing goes on while the client is away and while it comes back.
      const publishing = (async () => {
        for (let n = 11; n <= total; n++) await publish(n);
      })();
      const again = await b.connect(key);
      const ack = await again.request({ ...follow(taskId), since: before.at(-1)!.cursor });
      assert.equal(
        ack.type,
        subscription === 'subscribeAll' ? 'subscribedAll' : subscription === 'subscribe' ? 'subscribed' : 'outputSubscribed',
      );
      const after = await take(again, total - 10);
      await publishing;
      assert.deepEqual(
        [...before, ...after].map(seq),
        Array.from({ length: total }, (_, i) => i + 1),
      );
      assert.equal(new Set(after.map((f) => f.cursor)).size, after.length);
      assert.equal(again.pending.length, 0);
      await again.close();
    });
  }

  test('a replay is in log order where positions gain a digit (not sorted as text)', async () => {
    const { ownerId, key } = await a.owner();
    const taskId = await a.task(ownerId);
    // One loop turn of publishes is one INSERT: one txid, consecutive ids. Enough of them that
    // the ids cross the next power of ten, where '10' sorts before '9' as text.
    const [{ max }] = (await db.sql`SELECT coalesce(max(id), 0)::int AS max FROM mesh_event_log`) as unknown as [{ max: number }];
    const count = 10 ** String(max + 1).length - max + 5;
    const cursors = await Promise.all(
      Array.from({ length: count }, (_, i) => a.app.mesh.taskUpdates.publish(update(taskId, ownerId, i + 1))),
    );
    assert.equal(new Set(cursors.map((c) => c.split('.')[1])).size, 1, 'one transaction');
    const client = await b.connect(key);
    await client.request({ type: 'subscribe', taskId, since: cursors[0] });
    assert.deepEqual(
      versions(await take(client, count - 1)),
      Array.from({ length: count - 1 }, (_, i) => i + 2),
    );
    await client.close();
  });

  test('three subscriptions resumed at once: every event once, in order, replays before anything newer', async () => {
    const { ownerId, key } = await a.owner();
    const taskId = await a.task(ownerId);
    const publishBoth = async (n: number) => {
      await a.app.mesh.taskUpdates.publish(update(taskId, ownerId, n));
      await a.app.mesh.taskOutput.publish({ taskId, ownerId, messageType: 'assistant', content: String(n), isPartial: false });
    };
    const first = await a.connect(key);
    await first.request({ type: 'subscribe', taskId });
    await first.request({ type: 'subscribeAll' });
    await first.request({ type: 'subscribeOutput', taskId });
    await publishBoth(1);
    const had = await take(first, 2);
    await first.close();
    for (let n = 2; n <= 30; n++) await publishBoth(n);
    const again = await b.connect(key);
    const since = (type: string) => had.find((f) => f.type === type)!.cursor;
    // As a reconnecting client does: all three at once. subscribe and subscribeAll both cover
    // the task's updates; the second replay does not repeat what the first sent.
    again.send({ type: 'subscribe', taskId, since: since('taskUpdated') });
    again.send({ type: 'subscribeAll', since: since('taskUpdated') });
    again.send({ type: 'subscribeOutput', taskId, since: since('taskOutput') });
    const live = (async () => {
      for (let n = 31; n <= 40; n++) await publishBoth(n);
    })();
    const frames = await take(again, 3 + 39 * 2);
    await live;
    const expected = Array.from({ length: 39 }, (_, i) => i + 2);
    assert.deepEqual(
      frames.filter((f) => f.type === 'taskUpdated').map((f) => f.version),
      expected,
    );
    assert.deepEqual(
      frames.filter((f) => f.type === 'taskOutput').map((f) => Number(f.content)),
      expected,
    );
    assert.deepEqual(
      frames.filter((f) => !['taskUpdated', 'taskOutput'].includes(f.type)).map((f) => f.type),
      ['subscribed', 'subscribedAll', 'outputSubscribed'],
    );
    assert.equal(again.pending.length, 0);
    await again.close();
  });

  test('a cursor that is not one of ours, another log’s or one ahead of the log gets resyncRequired; the stream goes on live', async () => {
    const { ownerId, key } = await a.owner();
    const taskId = await a.task(ownerId);
    const logId = (await a.app.mesh.taskUpdates.publish(update(taskId, ownerId, 1))).split('.')[0];
    const client = await b.connect(key);
    for (const since of ['nonsense', 'ffffffff.1.1', `${logId}.18446744073709551615.1`, `${logId}.18446744073709551616.1`]) {
      assert.equal((await client.request({ type: 'subscribe', taskId, since })).type, 'subscribed');
      assert.deepEqual(await client.next(), { type: 'resyncRequired', subscription: 'subscribe', taskId, reason: 'unknownCursor' });
      await client.request({ type: 'unsubscribe', taskId });
    }
    await client.request({ type: 'subscribe', taskId });
    const cursor = await a.app.mesh.taskUpdates.publish(update(taskId, ownerId, 2));
    assert.equal((await client.next()).cursor, cursor);
    await client.close();
  });

  test('resume from before what retention kept: resyncRequired expired', async () => {
    const pruning = await startTestServer({ db, mesh: { bus: 'postgres', retentionPerTask: 3, pruneIntervalMs: 50 } });
    const { ownerId, key } = await a.owner();
    const taskId = await a.task(ownerId);
    const cursors: string[] = [];
    for (let v = 1; v <= 10; v++) cursors.push(await a.app.mesh.taskUpdates.publish(update(taskId, ownerId, v)));
    const kept = async () => (await db.sql`SELECT count(*)::int AS n FROM mesh_event_log WHERE task_id = ${taskId}`)[0]!.n as number;
    await prunedUntil(pruning, async () => (await kept()) <= 3);
    const client = await b.connect(key);
    await client.request({ type: 'subscribe', taskId, since: cursors[0] });
    assert.deepEqual(await client.next(), { type: 'resyncRequired', subscription: 'subscribe', taskId, reason: 'expired' });
    // From a cursor still in the log, the replay is exact.
    await client.request({ type: 'unsubscribe', taskId });
    await client.request({ type: 'subscribe', taskId, since: cursors[7] });
    assert.deepEqual(versions(await take(client, 2)), [9, 10]);
    await client.close();
    await pruning.close();
  });
});

test('retention by age: events older than retentionMs are pruned, younger ones kept and replayed', async () => {
  const { ownerId, key } = await a.owner();
  const taskId = await a.task(ownerId);
  const cursors: string[] = [];
  for (let v = 1; v <= 6; v++) cursors.push(await a.app.mesh.taskUpdates.publish(update(taskId, ownerId, v)));
  await db.sql`UPDATE mesh_event_log SET created_at = now() - interval '2 hours' WHERE task_id = ${taskId} AND (payload->>'version')::int <= 3`;
  const pruning = await startTestServer({ db, mesh: { bus: 'postgres', retentionMs: 60 * 60 * 1000, pruneIntervalMs: 50 } });
  const left = async () =>
    (await db.sql<{ v: number }[]>`SELECT (payload->>'version')::int AS v FROM mesh_event_log WHERE task_id = ${taskId} ORDER BY v`).map(
      (r) => r.v,
    );
  await prunedUntil(pruning, async () => (await left()).length <= 3);
  assert.deepEqual(await left(), [4, 5, 6]);
  const client = await b.connect(key);
  await client.request({ type: 'subscribe', taskId, since: cursors[0] });
  assert.deepEqual(await client.next(), { type: 'resyncRequired', subscription: 'subscribe', taskId, reason: 'expired' });
  await client.request({ type: 'unsubscribe', taskId });
  // From the newest pruned event on, nothing is missing: the replay is exact.
  await client.request({ type: 'subscribe', taskId, since: cursors[2] });
  assert.deepEqual(versions(await take(client, 3)), [4, 5, 6]);
  await client.close();
  await pruning.close();
});

test('the memory bus: since replays from its ring with the same frames, and a cursor it no longer holds is expired', async () => {
  const memory = await startTestServer({ db, mesh: { bus: 'memory', historySize: 5 } });
  const { ownerId, key } = await memory.owner();
  const taskId = await memory.task(ownerId);
  const cursors: string[] = [];
  for (let v = 1; v <= 8; v++) cursors.push(await memory.app.mesh.taskUpdates.publish(update(taskId, ownerId, v)));
  const client = await memory.connect(key);
  await client.request({ type: 'subscribe', taskId, since: cursors[5] });
  assert.deepEqual(versions(await take(client, 2)), [7, 8]);
  await client.request({ type: 'subscribeOutput', taskId, since: cursors[0] });
  assert.deepEqual(await client.next(), { type: 'resyncRequired', subscription: 'subscribeOutput', taskId, reason: 'expired' });
  const pgCursor = await a.app.mesh.taskUpdates.publish(update(await a.task(null), null, 1));
  await client.request({ type: 'subscribeAll', since: pgCursor });
  assert.deepEqual(await client.next(), { type: 'resyncRequired', subscription: 'subscribeAll', reason: 'unknownCursor' });
  await client.close();
  await memory.close();
});
