/**
 * A client that stops reading: the server holds back what it sends it (updates conflated, output
 * dropped and reported as `lagged`), closes it with 4008 past the hard limit or the time limit,
 * and a client reading normally on the same server gets everything meanwhile.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, before, test } from 'node:test';
import type { MeshSubscriptionsOptions } from '../src/index.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { deliveries } from './helpers/delivered.js';
import { startTestServer, type TestServer } from './helpers/server.js';
import { tcpOf, type Frame, type TestClient } from './helpers/ws-client.js';

let db: TestDatabase;
before(async () => {
  db = await createTestDatabase();
});
after(() => db.drop());

const KiB = 1024;

interface Setup {
  server: TestServer;
  taskId: string;
  ownerId: string;
  slow: TestClient;
  fast: TestClient;
  published: number;
  /** Publishes a piece of output and resolves once it has been handed to the sockets. */
  output(content: string): Promise<void>;
}

async function setup(mesh: Partial<MeshSubscriptionsOptions>, subscribe: object[]): Promise<Setup> {
  const server = await startTestServer({ db, mesh });
  const { ownerId, key } = await server.owner();
  const taskId = await server.task(ownerId);
  const slow = await server.connect(key);
  const fast = await server.connect(key);
  for (const client of [slow, fast]) for (const frame of subscribe) await client.request({ ...frame, taskId });
  const delivered = deliveries(server.app);
  const s: Setup = {
    server,
    taskId,
    ownerId,
    slow,
    fast,
    published: 0,
    async output(content) {
      const cursor = await server.app.mesh.taskOutput.publish({
        taskId,
        ownerId,
        messageType: 'raw',
        content: `${s.published++}:${content}`,
        isPartial: false,
      });
      await delivered(cursor);
    },
  };
  return s;
}

/** Stops reading on the slow client and publishes output until the server says it holds back. */
async function backUp(s: Setup, chunk: string): Promise<void> {
  tcpOf(s.slow).pause();
  let backedUp = false;
  const signal = once(s.server.app.mesh.events, 'backedUp').then(() => (backedUp = true));
  // Bounded: loopback buffers hold a few MiB at most.
  for (let i = 0; !backedUp && i < 20_000; i++) {
    await s.output(chunk);
    await new Promise(setImmediate); // lets this turn's frames be written
  }
  await signal;
}

const seq = (frame: Frame) => Number(String(frame.content).split(':')[0]);

test('output past the soft limit is dropped and reported as lagged once the client reads again', async () => {
  const s = await setup({ softBufferLimit: 64 * KiB, hardBufferLimit: 64 * 1024 * KiB }, [{ type: 'subscribeOutput' }]);
  await backUp(s, 'x'.repeat(16 * KiB));
  for (let i = 0; i < 10; i++) await s.output('after');
  const total = s.published;
  const drained = once(s.server.app.mesh.events, 'drained');
  tcpOf(s.slow).resume();
  const [{ lagged }] = await drained;
  await s.output('marker');

  const received: number[] = [];
  let lastCursor: unknown;
  let frame = await s.slow.next();
  for (; frame.type === 'taskOutput'; frame = await s.slow.next()) {
    received.push(seq(frame));
    lastCursor = frame.cursor;
  }
  assert.equal(frame.type, 'lagged');
  assert.deepEqual(received, [...received.keys()], 'what arrived before `lagged` is a gapless prefix');
  // Its cursor is the last output the client got: resuming from it fills the gap exactly.
  assert.deepEqual(frame, { type: 'lagged', taskId: s.taskId, skipped: total - received.length, cursor: lastCursor });
  assert.equal(lagged.get(s.taskId), total - received.length);
  assert.equal(seq(await s.slow.next()), total, 'output resumes after `lagged`');
  assert.equal((await s.slow.request({ type: 'subscribeOutput', taskId: s.taskId, since: frame.cursor })).type, 'outputSubscribed');
  for (let i = received.length; i <= total; i++) assert.equal(seq(await s.slow.next()), i, 'the replay from `lagged.cursor`');

  for (let i = 0; i <= total; i++) assert.equal(seq(await s.fast.next()), i, 'the reading client got everything');
  await s.server.close();
});

for (const mode of ['one by one', 'all at once (one delivery batch: what the subscribeAll sockets share)'] as const) {
  test(`updates to a backed-up client are conflated to the latest per task; published ${mode}`, async () => {
    const s = await setup({ softBufferLimit: 64 * KiB, hardBufferLimit: 64 * 1024 * KiB }, [{ type: 'subscribeOutput' }]);
    await s.slow.request({ type: 'subscribeAll' });
    await s.fast.request({ type: 'subscribeAll' });
    await backUp(s, 'x'.repeat(16 * KiB));
    const other = await s.server.task(s.ownerId);
    const delivered = deliveries(s.server.app);
    const publish = (taskId: string, version: number) =>
      s.server.app.mesh.taskUpdates.publish({
        taskId,
        ownerId: s.ownerId,
        version,
        status: `s${version}`,
        updatedFields: ['status'],
        updatedBy: 't',
      });
    const published: Promise<string>[] = [];
    let last = '';
    for (let version = 1; version <= 50; version++) {
      for (const taskId of [s.taskId, other]) {
        if (mode === 'one by one') last = await publish(taskId, version);
        else published.push(publish(taskId, version));
      }
    }
    if (published.length > 0) last = (await Promise.all(published)).at(-1)!;
    // All of them reached the socket while it was still backed up.
    await delivered(last);
    const drained = once(s.server.app.mesh.events, 'caughtUp');
    tcpOf(s.slow).resume();
    const [{ superseded }] = await drained;

    const updates: Frame[] = [];
    for (let frame = await s.slow.next(); frame.type !== 'lagged'; frame = await s.slow.next()) {
      if (frame.type === 'taskUpdated') updates.push(frame);
    }
    // Each of the 100 updates was either sent or superseded. The kernel may still take a few bytes
    // of the paused socket after it backed up, letting an early update through before conflation
    // starts; what matters is that the rest collapse to the latest per task.
    assert.equal(superseded + updates.length, 100);
    assert.ok(superseded >= 96, `conflated: ${superseded}`);
    assert.deepEqual(
      updates.slice(-2).map((u) => [u.taskId, u.version, u.status]),
      [
        [s.taskId, 50, 's50'],
        [other, 50, 's50'],
      ],
    );
    await s.server.close();
  });
}

test('held updates past the hard limit close the slow client with 4008; the reading client is unaffected', async () => {
  const s = await setup({ softBufferLimit: 64 * KiB, hardBufferLimit: 512 * KiB }, [{ type: 'subscribeOutput' }]);
  await s.slow.request({ type: 'subscribeAll' });
  await s.fast.request({ type: 'subscribeAll' });
  await backUp(s, 'y'.repeat(16 * KiB));
  let gone = false;
  const slowEvent = once(s.server.app.mesh.events, 'slowConsumer').then(([e]) => ((gone = true), e));
  // One update for each of many tasks: conflation keeps one per task, so only the limit stops it.
  let updates = 0;
  for (; !gone && updates < 100_000; updates++) {
    await s.server.app.mesh.taskUpdates.publish({
      taskId: crypto.randomUUID(),
      ownerId: s.ownerId,
      version: updates,
      status: 'running',
      updatedFields: ['status'],
      updatedBy: 'load',
    });
  }
  assert.deepEqual(await slowEvent, { why: 'buffer' });
  assert.equal(s.server.app.mesh.stats().connections, 1);
  // Per-task order is what is promised: the two streams may interleave.
  const outputs: number[] = [];
  const versions: unknown[] = [];
  for (let i = 0; i < s.published + updates; i++) {
    const frame = await s.fast.next();
    if (frame.type === 'taskOutput') outputs.push(seq(frame));
    else versions.push(frame.version);
  }
  assert.deepEqual(outputs, [...Array(s.published).keys()]);
  assert.deepEqual(versions, [...Array(updates).keys()]);
  tcpOf(s.slow).resume();
  await s.server.close();
});

test('backed up for longer than the time limit: closed with 4008', async () => {
  const s = await setup({ softBufferLimit: 64 * KiB, hardBufferLimit: 64 * 1024 * KiB, slowConsumerTimeoutMs: 300 }, [
    { type: 'subscribeOutput' },
  ]);
  const slowEvent = once(s.server.app.mesh.events, 'slowConsumer');
  await backUp(s, 'z'.repeat(16 * KiB));
  assert.deepEqual((await slowEvent)[0], { why: 'timeout' });
  assert.equal(s.server.app.mesh.stats().connections, 1);
  tcpOf(s.slow).resume();
  await s.server.close();
});
