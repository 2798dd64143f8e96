/**
 * The promises of PROTOCOL.md and the README, attacked as a hostile tenant would: an owner change
 * mid-stream, content PostgreSQL refuses, a poisoned row in the log, a resume far larger than a
 * socket's buffers, a seam that could swallow another stream's events, a writing transaction that
 * holds everything back, and a log that does not answer. Two instances on one database.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import type { FastifyBaseLogger } from 'fastify';
import pino from 'pino';
import postgres from 'postgres';
import { PostgresBus } from '../src/bus/postgres.js';
import { MeshBusUnavailableError, MeshPublishError } from '../src/errors.js';
import { DEFAULTS } from '../src/options.js';
import { MAX_EVENT_BYTES } from '../src/protocol/codec.js';
import { hashKey } from '../example/src/api-keys.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { deliveries } from './helpers/delivered.js';
import { startTestServer, type TestServer } from './helpers/server.js';

let db: TestDatabase;
let a: TestServer;
let b: TestServer;
const lines: Record<string, any>[] = [];
before(async () => {
  db = await createTestDatabase();
  const sink = {
    write(chunk: string) {
      for (const line of chunk.split('\n').filter(Boolean)) lines.push(JSON.parse(line));
    },
  };
  a = await startTestServer({ db, mesh: { bus: 'postgres' }, loggerInstance: pino({ level: 'info' }, sink) as FastifyBaseLogger });
  b = await startTestServer({ db, mesh: { bus: 'postgres' } });
});
after(async () => {
  await a.close();
  await b.close();
  await db.drop();
});

const update = (taskId: string, ownerId: string | null | undefined, version: number, status = 'running') => ({
  taskId,
  ...(ownerId === undefined ? {} : { ownerId }),
  version,
  status,
  updatedFields: ['status'],
  updatedBy: 'test',
});

const output = (taskId: string, content: string, extra: Record<string, unknown> = {}) => ({
  taskId,
  messageType: 'assistant',
  content,
  isPartial: false,
  ...extra,
});

async function metric(server: TestServer, name: string, labels: Record<string, string> = {}): Promise<number> {
  const found = (await server.app.mesh.metrics.getSingleMetric(name)?.get())?.values.find((v) =>
    Object.entries(labels).every(([k, value]) => String((v.labels as Record<string, unknown>)[k]) === value),
  );
  return found?.value ?? 0;
}

/**
 * A writing transaction held open: every reader stops before it, so what is published meanwhile is
 * logged but not yet read. Resolves with the function that commits it.
 */
async function holdReadersBack(): Promise<() => Promise<void>> {
  const blocker = await db.sql.reserve();
  await blocker`BEGIN`;
  await blocker`SELECT pg_current_xact_id()`;
  return async () => {
    await blocker`COMMIT`;
    blocker.release();
  };
}

const deep = (levels: number): unknown => JSON.parse(deepText(levels));
/** As text: deeper than JSON.stringify's stack reaches. */
const deepText = (levels: number): string => `${'{"down":'.repeat(levels)}"bottom"${'}'.repeat(levels)}`;

describe('an owner change', () => {
  test('no event published after it reaches the old owner, live or replayed, on any instance; the new owner gets them', async () => {
    const old = await a.owner();
    const next = await b.owner();
    const taskId = await a.task(old.ownerId);
    const marker = await a.task(old.ownerId);
    const oldClient = await a.connect(old.key);
    assert.equal((await oldClient.request({ type: 'subscribe', taskId })).type, 'subscribed');
    assert.equal((await oldClient.request({ type: 'subscribeOutput', taskId })).type, 'outputSubscribed');
    assert.equal((await oldClient.request({ type: 'subscribe', taskId: marker })).type, 'subscribed');
    const before = await a.app.mesh.taskUpdates.publish(update(taskId, undefined, 1));
    assert.equal((await oldClient.next()).version, 1);
    const newClient = await b.connect(next.key);
    assert.equal((await newClient.request({ type: 'subscribeAll' })).type, 'subscribedAll');

    await db.sql`UPDATE tasks SET owner_id = ${next.ownerId} WHERE id = ${taskId}`;
    // A worker publishes through SQL with the documented "NULL owner = looked up", and through JS.
    await db.sql`SELECT mesh_publish_task_update(${taskId}::uuid, NULL, 2, 'moved', '{status}', 'worker')`;
    await db.sql`SELECT mesh_publish_task_output(${taskId}::uuid, NULL, 'assistant', 'secret', NULL, NULL, NULL, NULL, NULL, NULL)`;
    await a.app.mesh.taskUpdates.publish(update(taskId, undefined, 3));
    await a.app.mesh.taskOutput.publish(output(taskId, 'secret too'));
    // Then an event the old owner may see: everything before it in the log has been handled.
    await a.app.mesh.taskUpdates.publish(update(marker, old.ownerId, 1));
    const seen = await oldClient.until((f) => f.taskId === marker);
    assert.deepEqual(
      seen.map((f) => [f.type, f.taskId === taskId ? 'moved task' : 'marker']),
      [['taskUpdated', 'marker']],
      'the old owner got nothing of the moved task',
    );
    const got = await newClient.until((f) => f.version === 3);
    assert.deepEqual(
      got.map((f) => [f.taskId, f.version]),
      [
        [taskId, 2],
        [taskId, 3],
      ],
    );

    // A new subscribe by the old owner is refused, on both instances, and nothing is replayed.
    for (const server of [a, b]) {
      const client = await server.connect(old.key);
      assert.equal((await client.request({ type: 'subscribe', taskId })).code, 'NOT_FOUND');
      assert.equal((await client.request({ type: 'subscribeOutput', taskId, since: before })).code, 'NOT_FOUND');
      assert.equal((await client.request({ type: 'subscribeAll', since: before })).type, 'subscribedAll');
      await a.app.mesh.taskUpdates.publish(update(marker, old.ownerId, 2));
      const replayed = await client.until((f) => f.taskId === marker && f.version === 2);
      assert.deepEqual(
        replayed.map((f) => [f.taskId === taskId ? 'moved task' : 'marker', f.version]),
        [
          ['marker', 1],
          ['marker', 2],
        ],
      );
      await client.close();
    }
    await oldClient.close();
    await newClient.close();
  });
});

describe('hostile content', () => {
  test('a NUL inside any string is delivered intact end to end, through JS and REST', async () => {
    const { ownerId, key } = await a.owner();
    const taskId = await a.task(ownerId);
    const client = await b.connect(key);
    await client.request({ type: 'subscribeOutput', taskId });
    await client.request({ type: 'subscribe', taskId });
    await a.app.mesh.taskUpdates.publish(update(taskId, ownerId, 1, 'st\u0000atus'));
    assert.equal((await client.next()).status, 'st\u0000atus');
    await a.app.mesh.taskOutput.publish(output(taskId, 'a\u0000b', { toolName: 'to\u0000ol', toolInput: { 'k\u0000': ['v\u0000'] } }));
    const frame = await client.next();
    assert.equal(frame.content, 'a\u0000b');
    assert.equal(frame.toolName, 'to\u0000ol');
    assert.deepEqual(frame.toolInput, { 'k\u0000': ['v\u0000'] });
    const rest = await a.http('POST', `/api/v1/mesh/tasks/${taskId}/output`, key, { messageType: 'assistant', content: 'rest\u0000ful' });
    assert.ok(rest.status < 300, `REST answered ${rest.status} ${JSON.stringify(rest.body)}`);
    assert.equal((await client.next()).content, 'rest\u0000ful');
    await client.close();
  });

  test('lone surrogates, JSON nested too deep and events too large are refused at publish() with MeshPublishError', async () => {
    const taskId = await a.task(null);
    const refusedUpdate = [
      update(taskId, null, 1, 'bad\ud800'),
      { ...update(taskId, null, 1), updatedBy: '\udc00' },
      { ...update(taskId, null, 1), updatedFields: ['x\ud800'] },
    ];
    for (const n of refusedUpdate)
      assert.throws(
        () => a.app.mesh.taskUpdates.publish(n),
        (e: unknown) => e instanceof MeshPublishError && e.code === 'INVALID_EVENT',
      );
    const refusedOutput = [
      output(taskId, 'bad\ud800'),
      output(taskId, 'ok', { messageType: '\udfff' }),
      output(taskId, 'ok', { toolName: 'x\ud800' }),
      output(taskId, 'ok', { toolInput: { ['k\ud800']: 1 } }),
      output(taskId, 'ok', { toolInput: deep(65) }),
      output(taskId, 'x'.repeat(2 * 1024 * 1024)),
    ];
    for (const n of refusedOutput) assert.throws(() => a.app.mesh.taskOutput.publish(n), MeshPublishError);
    // At the limits, accepted.
    await a.app.mesh.taskOutput.publish(output(taskId, 'ok', { toolInput: deep(63) }));
    await a.app.mesh.taskOutput.publish(output(taskId, 'x'.repeat(2 * 1024 * 1024 - 200)));
  });

  test('the example host answers bad content with 400 and a code, never 500', async () => {
    const { ownerId, key } = await a.owner();
    const taskId = await a.task(ownerId);
    // JSON.stringify writes a lone surrogate as an escape, as a hostile client would send it.
    const answer = await a.http(
      'POST',
      `/api/v1/mesh/tasks/${taskId}/output`,
      key,
      JSON.stringify({ messageType: 'assistant', content: 'bad\ud800' }),
    );
    assert.equal(answer.status, 400);
    assert.equal(typeof answer.body.code, 'string');
    const tooDeep = await a.http('POST', `/api/v1/mesh/tasks/${taskId}/output`, key, {
      messageType: 'tool_use',
      content: 'ok',
      toolInput: deep(200),
    });
    assert.equal(tooDeep.status, 400);
  });

  test('the SQL functions refuse JSON nested too deep and events too large with a clear exception', async () => {
    const taskId = await a.task(null);
    await assert.rejects(
      db.sql`SELECT mesh_publish_task_output(${taskId}::uuid, NULL, 'tool_use', 'x', 'bash', ${db.sql.json(deep(3000) as never)}, NULL, NULL, NULL, NULL)`,
      /nests deeper than 64 levels/,
    );
    await assert.rejects(
      db.sql`SELECT mesh_publish_task_output(${taskId}::uuid, NULL, 'assistant', ${'x'.repeat(2 * 1024 * 1024 + 1)}, NULL, NULL, NULL, NULL, NULL, NULL)`,
      /at most 2097152 are allowed/,
    );
    await assert.rejects(db.sql`SELECT mesh_publish_task_update(${taskId}::uuid, NULL, 1, ${'a\u0000b'}, '{}', 'x')`);
  });

  test('one bad row never fails another publisher’s write: the rest of the batch commits', async () => {
    // Straight on a bus of its own, past publish()'s checks: a row only PostgreSQL refuses.
    const bus = new PostgresBus(
      db.sql,
      { ...DEFAULTS.postgres, tasks: DEFAULTS.tasks, tickets: false, publishTimeoutMs: 5_000 },
      pino({ level: 'silent' }),
    );
    const taskId = await a.task(null);
    const good = (version: number) => bus.publish({ kind: 'update', event: { ...update(taskId, null, version), ownerId: null } });
    const bad = bus.publish({ kind: 'output', event: { ...output('not-a-uuid', 'refused'), ownerId: null } as never });
    const results = await Promise.allSettled([good(1), bad, good(2), good(3)]);
    assert.deepEqual(
      results.map((r) => r.status),
      ['fulfilled', 'rejected', 'fulfilled', 'fulfilled'],
    );
    const reason = (results[1] as PromiseRejectedResult).reason;
    assert.ok(reason instanceof MeshPublishError, `bad input is MeshPublishError, not ${reason}`);
    const [row] = await db.sql<{ n: number }[]>`SELECT count(*)::int AS n FROM mesh_event_log WHERE task_id = ${taskId}`;
    assert.equal(row!.n, 3);
  });

  test('an event in the log that cannot be delivered is skipped with a metric, the rest go out in order, no process falls', async () => {
    const { ownerId, key } = await a.owner();
    const taskId = await a.task(ownerId);
    const clientA = await a.connect(key);
    const clientB = await b.connect(key);
    for (const client of [clientA, clientB]) {
      await client.request({ type: 'subscribeOutput', taskId });
      await client.request({ type: 'subscribe', taskId });
    }
    const droppedBefore = await metric(a, 'mesh_events_dropped_total', { reason: 'invalid' });
    // Rows as a buggy writer could leave them, owner not settled (looked up on delivery), in one
    // transaction with good ones: deeper than any JSON encoder's stack, and not an event at all.
    await db.sql.begin(async (tx) => {
      await tx`SELECT mesh_publish_task_update(${taskId}::uuid, NULL, 1, 'first', '{}', 'x')`;
      await tx`INSERT INTO mesh_event_log (kind, task_id, owner_id, owner_given, payload)
        VALUES ('output', ${taskId}, NULL, false, ${`{"messageType":"tool_use","content":"deep","isPartial":false,"toolInput":${deepText(6000)}}`}::json)`;
      await tx`INSERT INTO mesh_event_log (kind, task_id, owner_id, owner_given, payload) VALUES ('update', ${taskId}, NULL, false, '{"version":"x"}'::json)`;
      await tx`SELECT mesh_publish_task_output(${taskId}::uuid, NULL, 'assistant', 'after', NULL, NULL, NULL, NULL, NULL, NULL)`;
      await tx`SELECT mesh_publish_task_update(${taskId}::uuid, NULL, 2, 'second', '{}', 'x')`;
    });
    for (const client of [clientA, clientB]) {
      const frames = await client.until((f) => f.version === 2);
      assert.deepEqual(
        frames.map((f) => f.status ?? f.content),
        ['first', 'after', 'second'],
      );
    }
    assert.equal((await metric(a, 'mesh_events_dropped_total', { reason: 'invalid' })) - droppedBefore, 2);
    assert.ok(lines.some((l) => l.msg?.startsWith('skipping a logged event') && l.reason === 'invalid'));
    // A replay skips them the same way.
    const since = await db.sql<
      { c: string }[]
    >`SELECT mesh_log_cursor(txid, id) AS c FROM mesh_event_log WHERE task_id = ${taskId} ORDER BY txid, id LIMIT 1`;
    const late = await b.connect(key);
    await late.request({ type: 'subscribeOutput', taskId, since: since[0]!.c });
    assert.equal((await late.next()).content, 'after');
    // Both processes still serve.
    for (const server of [a, b]) assert.equal((await server.http('GET', '/healthz', undefined)).status, 200);
    for (const client of [clientA, clientB, late]) await client.close();
  });
});

describe('resumes', () => {
  test('a resume far larger than the hard buffer limit completes for a client that reads', async () => {
    const { ownerId, key } = await a.owner();
    const taskId = await a.task(ownerId);
    const since = await a.app.mesh.taskOutput.publish(output(taskId, 'start', { ownerId }));
    const chunk = (i: number) => `${i}:`.padEnd(1_000_000, 'x');
    for (let i = 0; i < 12; i++) await a.app.mesh.taskOutput.publish(output(taskId, chunk(i), { ownerId }));
    const client = await b.connect(key);
    client.send({ type: 'subscribeOutput', taskId, since });
    assert.equal((await client.next()).type, 'outputSubscribed');
    for (let i = 0; i < 12; i++) assert.equal((await client.next()).content, chunk(i));
    // Then live.
    await a.app.mesh.taskOutput.publish(output(taskId, 'live', { ownerId }));
    assert.equal((await client.next()).content, 'live');
    await client.close();
  });

  test('a since ahead of the reader drops no live event of the socket’s other streams', async () => {
    const { ownerId, key } = await a.owner();
    const resumed = await a.task(ownerId);
    const other = await a.task(ownerId);
    const client = await a.connect(key);
    await client.request({ type: 'subscribe', taskId: other });
    const delivered = deliveries(a.app);
    const release = await holdReadersBack();
    const held = once(a.app.mesh.events, 'heldBack');
    const otherCursor = await a.app.mesh.taskUpdates.publish(update(other, ownerId, 1));
    const since = await a.app.mesh.taskUpdates.publish(update(resumed, ownerId, 1));
    await held;
    // A cursor from another instance, ahead of this one's reader.
    assert.equal((await client.request({ type: 'subscribe', taskId: resumed, since })).type, 'subscribed');
    await release();
    await delivered(since);
    await a.app.mesh.taskUpdates.publish(update(resumed, ownerId, 2));
    const frames = await client.until((f) => f.taskId === resumed && f.version === 2);
    assert.deepEqual(
      frames.map((f) => [f.taskId === other ? 'other' : 'resumed', f.version, f.cursor]),
      [
        ['other', 1, otherCursor],
        ['resumed', 2, frames.at(-1)!.cursor],
      ],
    );
    await client.close();
  });

  test('held-back delivery shows while it happens: mesh_bus_held_back_seconds grows, then falls to 0', async () => {
    const { ownerId } = await a.owner();
    const taskId = await a.task(ownerId);
    const delivered = deliveries(a.app);
    const release = await holdReadersBack();
    const held = once(a.app.mesh.events, 'heldBack');
    const cursor = await a.app.mesh.taskUpdates.publish(update(taskId, ownerId, 1));
    await held;
    const first = await metric(a, 'mesh_bus_held_back_seconds');
    assert.ok(first > 0, `held back for ${first} s while the transaction runs`);
    // Still waiting at the next read: the figure grows.
    await once(a.app.mesh.events, 'heldBack');
    assert.ok((await metric(a, 'mesh_bus_held_back_seconds')) > first);
    await release();
    await delivered(cursor);
    assert.equal(await metric(a, 'mesh_bus_held_back_seconds'), 0);
  });
});

test('a log that does not answer: publish() rejects with MeshBusUnavailableError after publishTimeoutMs', async () => {
  const sockets = new Set<Socket>();
  const silent = createServer((socket) => sockets.add(socket));
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  const sql = postgres(`postgres://nobody@127.0.0.1:${(silent.address() as { port: number }).port}/none`, { max: 1 });
  const bus = new PostgresBus(
    sql,
    { ...DEFAULTS.postgres, tasks: DEFAULTS.tasks, tickets: false, publishTimeoutMs: 200 },
    pino({ level: 'silent' }),
  );
  const taskId = crypto.randomUUID();
  await assert.rejects(
    bus.publish({ kind: 'update', event: { ...update(taskId, null, 1), ownerId: null } }),
    (e: unknown) => e instanceof MeshBusUnavailableError && e.code === 'UNAVAILABLE',
  );
  for (const socket of sockets) socket.destroy();
  silent.close();
  await sql.end({ timeout: 0 });
});

test('a resume racing the pruning is gapless from its since, or answered expired', async () => {
  const own = await createTestDatabase();
  const server = await startTestServer({ db: own, mesh: { bus: 'postgres', retentionPerTask: 50, pruneIntervalMs: 1 } });
  let publishing = true;
  let publisher: Promise<void> = Promise.resolve();
  let caughtUp = () => {};
  let unlisten = () => {};
  try {
    const { ownerId, key } = await server.owner();
    const taskId = await server.task(ownerId);
    let version = 0;
    // Retention must stay longer than the instance may lag behind (README): rows its reader has not
    // read yet are not there for the live stream once pruned, and a resume's replay hands the live
    // stream whatever was still held back when it read (a writing transaction open anywhere on the
    // cluster holds every reader back, even another database's, as in a parallel test run). So each
    // batch of 20 goes out once the last one is delivered: at most 20 unread events, under the 50
    // retained, and what races the pruning is the resume, as this test means.
    let delivered = 0;
    unlisten = server.app.mesh.taskUpdates.subscribe((event) => {
      if (event.taskId !== taskId) return;
      delivered = event.version;
      caughtUp();
    });
    publisher = (async () => {
      while (publishing) {
        await Promise.all(Array.from({ length: 20 }, () => server.app.mesh.taskUpdates.publish(update(taskId, ownerId, ++version))));
        while (publishing && delivered < version) await new Promise<void>((resolve) => (caughtUp = resolve));
      }
    })();
    const outcomes = { attempts: 0, gapless: 0, expired: 0 };
    const resumer = async () => {
      const client = await server.connect(key);
      for (let i = 0; i < 150; i++) {
        // Close to the oldest retained event: the pruning is about to take it.
        const [near] = await own.sql<{ cursor: string; version: number }[]>`
          SELECT mesh_log_cursor(txid, id) AS cursor, (payload->>'version')::int AS version
          FROM mesh_event_log WHERE task_id = ${taskId} ORDER BY txid, id LIMIT 1 OFFSET 2`;
        if (!near) continue;
        outcomes.attempts++;
        assert.equal((await client.request({ type: 'subscribe', taskId, since: near.cursor })).type, 'subscribed');
        const first = await client.next();
        if (first.type === 'resyncRequired') {
          assert.equal(first.reason, 'expired');
          outcomes.expired++;
        } else {
          assert.equal(first.version, near.version + 1, `resumed after version ${near.version}, got ${first.version}`);
          outcomes.gapless++;
        }
        client.send({ type: 'unsubscribe', taskId });
        await client.until((f) => f.type === 'unsubscribed');
      }
      await client.close();
    };
    await Promise.all([resumer(), resumer(), resumer(), resumer()]);
    assert.equal(outcomes.gapless + outcomes.expired, outcomes.attempts);
    assert.ok(outcomes.attempts > 500, `${outcomes.attempts} resumes raced the pruning`);
  } finally {
    publishing = false;
    caughtUp();
    await publisher;
    unlisten();
    await server.close();
    await own.drop();
  }
});

test('a socket ws closes for a protocol error is logged and counted with that code, closed by the server', async () => {
  const { key } = await a.owner();
  const client = await a.connect(key);
  const before = await metric(a, 'mesh_closes_total', { code: '1007' });
  const from = lines.length;
  // A text frame that is not UTF-8.
  client.socket.send(Buffer.from([0xff, 0xfe, 0xfd]), { binary: false });
  assert.equal((await client.closed).code, 1007);
  const closedLine = () => lines.slice(from).find((l) => l.msg === 'websocket closed');
  while (!closedLine()) await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual([closedLine()!.closeCode, closedLine()!.closedBy], [1007, 'server']);
  assert.equal((await metric(a, 'mesh_closes_total', { code: '1007' })) - before, 1);
});

describe('at the limits, found in review', () => {
  test('an output event publish() accepts at the size limit reaches its subscriber (not dropped on delivery)', async () => {
    const { ownerId, key } = await a.owner();
    const taskId = await a.task(ownerId);
    const client = await a.connect(key);
    assert.equal((await client.request({ type: 'subscribeOutput', taskId })).type, 'outputSubscribed');
    // Exactly MAX_EVENT_BYTES as publish() measures it (owner left to the log, as documented).
    const overhead = Buffer.byteLength(JSON.stringify(output(taskId, ''))) + 2;
    const content = 'x'.repeat(MAX_EVENT_BYTES - overhead);
    const droppedBefore = await metric(a, 'mesh_events_dropped_total', { reason: 'invalid' });
    const cursor = await a.app.mesh.taskOutput.publish(output(taskId, content));
    assert.match(cursor, /\./, 'publish() accepted it and gave a cursor');
    // The next event once this one has reached the client (were it dropped, none would: the test
    // times out): published at once, it could find 2 MiB still in the socket's buffer and be
    // skipped with a `lagged`, as a slow consumer's event is.
    const first = await client.next();
    await a.app.mesh.taskOutput.publish(output(taskId, 'after'));
    const frames = [first, ...(await client.until((f) => f.content === 'after'))];
    const dropped = (await metric(a, 'mesh_events_dropped_total', { reason: 'invalid' })) - droppedBefore;
    assert.deepEqual(
      frames.map((f) => (f.content === content ? 'the accepted event' : f.content)),
      ['the accepted event', 'after'],
      `publish() resolved with ${cursor}, yet the event was dropped on delivery (mesh_events_dropped_total{reason="invalid"} +${dropped})`,
    );
    await client.close();
  });
});

describe('the seam of a resume', () => {
  test('a resumed output stream of a task that keeps streaming goes live, and the socket’s next frame is answered', async () => {
    // An owner source that takes 100 ms (a remote service; lookupTimeoutMs allows 5 s), and a
    // worker streaming a task's output through SQL with the documented "NULL owner = looked up".
    const own = await createTestDatabase();
    const resolveOwners = async (taskIds: readonly string[]) => {
      await new Promise((resolve) => setTimeout(resolve, 100));
      const rows = await own.sql<{ id: string; owner_id: string | null }[]>`
        SELECT id::text, owner_id::text FROM tasks WHERE id = ANY(${taskIds as string[]}::uuid[])`;
      return new Map(rows.map((r) => [r.id, r.owner_id]));
    };
    const d = await startTestServer({ db: own, mesh: { bus: 'postgres', resolveOwners } });
    let streaming = true;
    let published = 0;
    let streamer: Promise<void> = Promise.resolve();
    let flowing = () => {};
    const started = new Promise<void>((resolve) => (flowing = resolve));
    try {
      const { ownerId, key } = await d.owner();
      const taskId = await d.task(ownerId);
      const other = await d.task(ownerId);
      const since = await d.app.mesh.taskOutput.publish(output(taskId, 'start', { ownerId }));
      streamer = (async () => {
        // A token every 20 ms, for at most 1,500 tokens: the resume must go live while they come.
        while (streaming && published < 1_500) {
          await own.sql`SELECT mesh_publish_task_output(${taskId}::uuid, NULL, 'assistant', ${`token ${published++}`}, NULL, NULL, NULL, NULL, NULL, true)`;
          if (published === 10) flowing();
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
        streaming = false;
      })();
      await started;
      const client = await d.connect(key);
      client.send({ type: 'subscribeOutput', taskId, since });
      client.send({ type: 'subscribe', taskId: other });
      const sentAt = published;
      await client.until((f) => f.type === 'subscribed' && f.taskId === other);
      // Counted in the task's own events, not in time: a replay that goes live answers within a
      // few pages; one that reads on while events come answers only when they stop.
      assert.ok(
        published - sentAt < 100,
        `the subscribe sent after a resume was answered only after ${published - sentAt} more events${streaming ? '' : ', once the task stopped streaming'}: ` +
          'the replay read page after page while live events kept coming, and the socket’s later frames waited behind it',
      );
      await client.close();
    } finally {
      streaming = false;
      await streamer;
      await d.close();
      await own.drop();
    }
  });

  test('a principal that becomes admin during a subscribeAll replay loses no update published meanwhile', async () => {
    const reauthLines: Record<string, any>[] = [];
    const sink = {
      write(chunk: string) {
        for (const line of chunk.split('\n').filter(Boolean)) reauthLines.push(JSON.parse(line));
      },
    };
    const c = await startTestServer({
      db,
      mesh: { bus: 'postgres', reauthIntervalMs: 100 },
      loggerInstance: pino({ level: 'info' }, sink) as FastifyBaseLogger,
    });
    try {
      const mine = await c.owner();
      const theirs = await c.owner();
      const myTask = await c.task(mine.ownerId);
      const theirTask = await c.task(theirs.ownerId);
      const since = await c.app.mesh.taskUpdates.publish(update(myTask, mine.ownerId, 0));
      // A replay larger than the socket's buffers: it waits between pages for a client that reads slowly.
      const big = 'x'.repeat(1_500_000);
      for (let i = 1; i <= 16; i++) await c.app.mesh.taskUpdates.publish(update(myTask, mine.ownerId, i, big));
      const delivered = deliveries(c.app);
      const client = await c.connect(mine.key);
      client.send({ type: 'subscribeAll', since });
      // It cannot take 24 MB without reading: the replay is still going when the key changes.
      client.socket.pause();
      // The key is made an admin's; the next sweep re-files the socket among admins.
      await db.sql`UPDATE api_keys SET is_admin = true WHERE key_hash = ${hashKey(mine.key)}`;
      while (!reauthLines.some((l) => l.msg?.startsWith('principal changed on re-authentication')))
        await new Promise((r) => setImmediate(r));
      const lost = await c.app.mesh.taskUpdates.publish(update(theirTask, theirs.ownerId, 1));
      await delivered(lost);
      client.socket.resume();
      assert.equal((await client.next()).type, 'subscribedAll');
      for (let i = 1; i <= 16; i++) assert.equal((await client.next()).version, i);
      const marker = await c.app.mesh.taskUpdates.publish(update(theirTask, theirs.ownerId, 2));
      const frames = await client.until((f) => f.cursor === marker);
      assert.deepEqual(
        frames.map((f) => [f.taskId === theirTask ? 'their task' : 'my task', f.version]),
        [
          ['their task', 1],
          ['their task', 2],
        ],
        'the update published after the socket became an admin’s, during its replay, never reached it',
      );
      await client.close();
    } finally {
      await c.close();
    }
  });

  test('with resolveOwners, an update of subscribeAll’s replay whose live owner lookup is slower than another task’s event is not sent twice', async () => {
    const own = await createTestDatabase();
    let gate: { taskId: string; entered: () => void; release: Promise<void> } | undefined;
    const resolveOwners = async (taskIds: readonly string[]) => {
      const held = gate;
      if (held && taskIds.includes(held.taskId)) {
        gate = undefined;
        held.entered();
        await held.release;
      }
      const rows = await own.sql<{ id: string; owner_id: string | null }[]>`
        SELECT id::text, owner_id::text FROM tasks WHERE id = ANY(${taskIds as string[]}::uuid[])`;
      return new Map(rows.map((r) => [r.id, r.owner_id]));
    };
    const d = await startTestServer({ db: own, mesh: { bus: 'postgres', resolveOwners } });
    let release = () => {};
    try {
      const { ownerId, key } = await d.owner();
      const slow = await d.task(ownerId);
      const quick = await d.task(ownerId);
      const since = await d.app.mesh.taskUpdates.publish(update(quick, ownerId, 0));
      const entered = new Promise<void>((resolve) => {
        gate = { taskId: slow, entered: resolve, release: new Promise<void>((r) => (release = r)) };
      });
      // A worker publishes through SQL with the documented "NULL owner = looked up".
      const [{ cursor: slowCursor }] = (await own.sql`
        SELECT mesh_publish_task_update(${slow}::uuid, NULL, 1, 'slow', '{status}', 'worker') AS cursor`) as unknown as [
        { cursor: string },
      ];
      // The live reader has it and waits for its owner.
      await entered;
      const client = await d.connect(key);
      assert.equal((await client.request({ type: 'subscribeAll', since })).type, 'subscribedAll');
      const replayed = await client.next();
      assert.deepEqual([replayed.taskId, replayed.version, replayed.cursor], [slow, 1, slowCursor], 'the replay sent it');
      // Another task's update, after it in the log, ends the seam.
      await d.app.mesh.taskUpdates.publish(update(quick, ownerId, 1));
      assert.equal((await client.next()).version, 1);
      release();
      const marker = await d.app.mesh.taskUpdates.publish(update(quick, ownerId, 2));
      const frames = await client.until((f) => f.cursor === marker);
      assert.deepEqual(
        frames.map((f) => [
          f.taskId === slow ? 'slow task' : 'quick task',
          f.version,
          f.cursor === slowCursor ? 'the replayed event again' : '',
        ]),
        [['quick task', 2, '']],
        'the replayed event came a second time, live, once its owner lookup answered',
      );
      await client.close();
    } finally {
      release();
      await d.close();
      await own.drop();
    }
  });
});
