/**
 * Delivery in batches (a bus read of several events, the memory bus's publishes of one go) on a
 * real server and real sockets: where a batch could give a socket other than what delivery one
 * event at a time gives it. The index's own equivalence is a property test (registry.test.ts).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { deliveries } from './helpers/delivered.js';
import { startTestServer } from './helpers/server.js';
import { tcpOf, type Frame } from './helpers/ws-client.js';

let db: TestDatabase;
before(async () => {
  db = await createTestDatabase();
});
after(() => db.drop());

const KiB = 1024;

for (const mode of ['one by one', 'in one go (one delivery batch)'] as const) {
  // Bounded: a slow socket left open would otherwise leave the test waiting for its close forever.
  test(
    `a socket that fails on its subscribeAll share does not cost another socket an output; published ${mode}`,
    { timeout: 30_000 },
    async () => {
      const server = await startTestServer({
        db,
        mesh: { bus: 'memory', softBufferLimit: 64 * KiB, hardBufferLimit: 128 * KiB },
      });
      const { ownerId, key } = await server.owner();
      const taskId = await server.task(ownerId);
      // A: follows the task's output (first, so it comes first among the followers) and holds subscribeAll.
      const a = await server.connect(key);
      assert.equal((await a.request({ type: 'subscribeOutput', taskId })).type, 'outputSubscribed');
      assert.equal((await a.request({ type: 'subscribeAll' })).type, 'subscribedAll');
      // B: follows the task's output only.
      const b = await server.connect(key);
      assert.equal((await b.request({ type: 'subscribeOutput', taskId })).type, 'outputSubscribed');

      // A host's `app.mesh.events` listener with a bug: it throws while A is being closed as a slow consumer.
      server.app.mesh.events.on('slowConsumer', () => {
        throw new Error('host listener bug');
      });
      const delivered = deliveries(server.app);
      // An update bigger than the hard limit: A's socket fails on it (slow consumer; the listener throws).
      const update = () =>
        server.app.mesh.taskUpdates.publish({
          taskId,
          ownerId,
          version: 1,
          status: 'x'.repeat(200 * KiB),
          updatedFields: ['status'],
          updatedBy: 't',
        });
      const output = (content: string) =>
        server.app.mesh.taskOutput.publish({ taskId, ownerId, messageType: 'raw', content, isPartial: false });
      if (mode === 'one by one') {
        await update();
        await output('o1');
      } else await Promise.all([update(), output('o1')]);
      await delivered(await output('marker'));

      const got: Frame[] = await b.until((f) => f.type === 'taskOutput' && f.content === 'marker');
      assert.deepEqual(
        got.map((f) => f.content),
        ['o1', 'marker'],
        'B got every output of the task it follows',
      );
      assert.equal((await a.closed).code, 4008, 'the throwing listener did not keep the slow socket open');
      await server.close();
    },
  );
}

const sequence = (cursor: unknown) => Number(String(cursor).split('.')[1]);

/**
 * Memory bus: were an event in the ring (and `head()`) before its sockets had it, a
 * `subscribeOutput` answered in between would start its stream at that head, and a `lagged` for
 * an output it then drops would point past that very output. The owner lookup is answered by hand
 * and the publish follows it by k microtasks, for every k that could fall in between.
 */
test('memory bus: lagged.cursor never points past an output the client did not get (subscribe answered between publish and delivery)', async () => {
  const owners = new Map<string, string | null>();
  let gate: { taskId: string; called: () => void; release?: () => void } | undefined;
  const resolveOwners = (taskIds: readonly string[]): Promise<ReadonlyMap<string, string | null>> => {
    const answer = new Map(taskIds.filter((t) => owners.has(t)).map((t) => [t, owners.get(t)!] as const));
    const g = gate;
    if (g === undefined || !taskIds.includes(g.taskId)) return Promise.resolve(answer);
    gate = undefined;
    return new Promise((resolve) => {
      g.release = () => resolve(answer);
      g.called();
    });
  };
  const server = await startTestServer({
    db,
    mesh: { bus: 'memory', resolveOwners, softBufferLimit: 16 * KiB, hardBufferLimit: 256 * 1024 * KiB, slowConsumerTimeoutMs: 300_000 },
  });
  const { ownerId, key } = await server.owner();
  const newTask = async () => {
    const id = await server.task(ownerId);
    owners.set(id, ownerId);
    return id;
  };
  const delivered = deliveries(server.app);
  const output = (taskId: string, content: string) =>
    server.app.mesh.taskOutput.publish({ taskId, ownerId, messageType: 'raw', content, isPartial: false });

  // The client follows T0 and stops reading, until the server holds its output back.
  const t0 = await newTask();
  const slow = await server.connect(key);
  assert.equal((await slow.request({ type: 'subscribeOutput', taskId: t0 })).type, 'outputSubscribed');
  tcpOf(slow).pause();
  let backedUp = false;
  const signal = new Promise<void>((resolve) => server.app.mesh.events.once('backedUp', () => ((backedUp = true), resolve())));
  for (let i = 0; !backedUp && i < 20_000; i++) {
    await delivered(await output(t0, 'x'.repeat(8 * KiB)));
    await new Promise(setImmediate);
  }
  await signal;

  // For each k: subscribeOutput(T_k); its owner lookup is answered, and after k microtasks E_k is published.
  const published = new Map<string, string>();
  const hop = new Map<string, number>();
  for (let k = 0; k < 16; k++) {
    const taskId = await newTask();
    const called = new Promise<void>((resolve) => (gate = { taskId, called: resolve }));
    const g = gate!;
    slow.send({ type: 'subscribeOutput', taskId });
    await called;
    g.release!();
    for (let i = 0; i < k; i++) await null;
    const cursor = await output(taskId, `E${k}`);
    published.set(taskId, cursor);
    hop.set(taskId, k);
    await new Promise(setImmediate);
  }

  const caughtUp = new Promise<void>((resolve) => server.app.mesh.events.once('caughtUp', () => resolve()));
  tcpOf(slow).resume();
  await caughtUp;
  await delivered(await output(t0, 'marker'));
  const frames = await slow.until((f) => f.type === 'taskOutput' && f.content === 'marker');
  const got = new Set(frames.filter((f) => f.type === 'taskOutput').map((f) => f.taskId));
  const lost: string[] = [];
  for (const f of frames) {
    if (f.type !== 'lagged' || !published.has(f.taskId as string)) continue;
    const e = published.get(f.taskId as string)!;
    if (!got.has(f.taskId) && sequence(f.cursor) >= sequence(e))
      lost.push(`k=${hop.get(f.taskId as string)}: lagged ${f.cursor} (skipped ${f.skipped}) but the dropped E was ${e}`);
  }
  assert.deepEqual(lost, []);
  await server.close();
});
