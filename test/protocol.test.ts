/**
 * the wire protocol of the Rust server, frame by frame, over real sockets against a real database.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startTestServer, type TestServer } from './helpers/server.js';

let server: TestServer;
let owner: { ownerId: string; key: string };
let taskId: string;

before(async () => {
  server = await startTestServer();
  owner = await server.owner();
  taskId = await server.task(owner.ownerId);
});
after(() => server.close());

const update = (id: string, version: number, extra: Record<string, unknown> = {}) => ({
  taskId: id,
  version,
  status: 'running',
  updatedFields: ['status'],
  updatedBy: 'test',
  ...extra,
});

describe('acks', () => {
  test('each client message gets its ack, task ids in canonical lower case', async () => {
    const client = await server.connect(owner.key);
    const upper = taskId.toUpperCase();
    assert.deepEqual(await client.request({ type: 'subscribe', taskId: upper }), { type: 'subscribed', taskId });
    assert.deepEqual(await client.request({ type: 'subscribeOutput', taskId: upper }), { type: 'outputSubscribed', taskId });
    assert.deepEqual(await client.request({ type: 'subscribeAll' }), { type: 'subscribedAll' });
    assert.deepEqual(await client.request({ type: 'unsubscribeAll' }), { type: 'unsubscribedAll' });
    assert.deepEqual(await client.request({ type: 'unsubscribeOutput', taskId: upper }), { type: 'outputUnsubscribed', taskId });
    assert.deepEqual(await client.request({ type: 'unsubscribe', taskId: upper }), { type: 'unsubscribed', taskId });
    await client.close();
  });

  test('unknown extra fields are ignored, as serde ignores them', async () => {
    const client = await server.connect(owner.key);
    assert.deepEqual(await client.request({ type: 'subscribe', taskId, extra: { deep: [1, 2] }, Since: 'x' }), {
      type: 'subscribed',
      taskId,
    });
    assert.deepEqual(await client.request({ type: 'subscribeAll', junk: true }), { type: 'subscribedAll' });
    // Found by the fuzz test: a stray non-string taskId on a message that takes none.
    assert.deepEqual(await client.request({ type: 'unsubscribeAll', taskId: { x: 1 } }), { type: 'unsubscribedAll' });
    await client.close();
  });

  test('replies come in the order of the frames, even when a lookup is in between', async () => {
    const other = await server.task(owner.ownerId);
    const client = await server.connect(owner.key);
    client.send({ type: 'subscribe', taskId: other });
    client.send({ type: 'unsubscribe', taskId: other });
    client.send({ type: 'subscribeAll' });
    client.send('not json');
    assert.deepEqual(await client.next(), { type: 'subscribed', taskId: other });
    assert.deepEqual(await client.next(), { type: 'unsubscribed', taskId: other });
    assert.deepEqual(await client.next(), { type: 'subscribedAll' });
    assert.equal((await client.next()).code, 'PARSE_ERROR');
    await client.close();
  });
});

describe('bad frames get PARSE_ERROR and the socket stays open', () => {
  const cases: Array<[string, unknown]> = [
    ['not JSON', '{"type": "subscribe",'],
    ['a JSON string', '"subscribe"'],
    ['a JSON array', '[{"type":"subscribeAll"}]'],
    ['null', 'null'],
    ['a number', '42'],
    ['no type', { taskId: '00000000-0000-0000-0000-000000000000' }],
    ['a non-string type', { type: 7 }],
    ['an unknown type', { type: 'subscribeEverything' }],
    ['a missing taskId', { type: 'subscribe' }],
    ['a taskId that is not a string', { type: 'subscribeOutput', taskId: 12345 }],
    ['a malformed UUID', { type: 'unsubscribe', taskId: 'not-a-uuid' }],
    ['a UUID with a trailing character', { type: 'subscribe', taskId: '00000000-0000-0000-0000-0000000000001' }],
    ['a braced UUID', { type: 'subscribe', taskId: '{00000000-0000-0000-0000-000000000000}' }],
    ['an empty frame', ''],
  ];
  for (const [name, frame] of cases) {
    test(name, async () => {
      const client = await server.connect(owner.key);
      const reply = await client.request(frame);
      assert.equal(reply.type, 'error');
      assert.equal(reply.code, 'PARSE_ERROR');
      assert.equal(typeof reply.message, 'string');
      assert.deepEqual(await client.request({ type: 'subscribe', taskId }), { type: 'subscribed', taskId });
      await client.close();
    });
  }

  test('a binary frame', async () => {
    const client = await server.connect(owner.key);
    const reply = await client.request(Buffer.from(JSON.stringify({ type: 'subscribeAll' })));
    assert.equal(reply.code, 'PARSE_ERROR');
    assert.deepEqual(await client.request({ type: 'subscribeAll' }), { type: 'subscribedAll' });
    await client.close();
  });

  test('an echoed type is cut short, so a client cannot make the server amplify it', async () => {
    const client = await server.connect(owner.key);
    const reply = await client.request({ type: 'x'.repeat(10_000) });
    assert.equal(reply.code, 'PARSE_ERROR');
    assert.ok(String(reply.message).length < 200);
    await client.close();
  });
});

describe('events', () => {
  test('taskUpdated carries exactly the Rust server’s fields, and its cursor', async () => {
    const client = await server.connect(owner.key);
    await client.request({ type: 'subscribe', taskId });
    const cursor = await server.app.mesh.taskUpdates.publish(update(taskId.toUpperCase(), 7, { ownerId: owner.ownerId }));
    // The Rust server's fields, and the cursor (an extra field: the iOS client ignores it).
    assert.deepEqual(await client.next(), {
      type: 'taskUpdated',
      taskId,
      version: 7,
      status: 'running',
      updatedFields: ['status'],
      updatedBy: 'test',
      cursor,
    });
    await client.close();
  });

  test('taskOutput leaves absent optional fields out, never null, and always has isPartial', async () => {
    const client = await server.connect(owner.key);
    await client.request({ type: 'subscribeOutput', taskId });
    const cursor = await server.app.mesh.taskOutput.publish({
      taskId,
      ownerId: owner.ownerId,
      messageType: 'assistant',
      content: 'hello',
      toolName: null,
      isError: null,
      isPartial: false,
    });
    const bare = await client.next();
    assert.deepEqual(bare, { type: 'taskOutput', taskId, messageType: 'assistant', content: 'hello', isPartial: false, cursor });
    const full = {
      taskId,
      messageType: 'tool_use',
      content: '',
      toolName: 'Bash',
      toolInput: { command: 'ls', args: [1, null, { a: true }] },
      isError: false,
      costUsd: 0.0123,
      durationMs: 1500,
      isPartial: true,
    };
    const fullCursor = await server.app.mesh.taskOutput.publish({ ...full, ownerId: owner.ownerId });
    // Every optional field present: each comes through as published, and nothing else does.
    assert.deepEqual(await client.next(), { type: 'taskOutput', ...full, cursor: fullCursor });
    await client.close();
  });

  test('frames of every length encoding arrive intact (7-bit, 16-bit and 64-bit lengths)', async () => {
    const client = await server.connect(owner.key);
    await client.request({ type: 'subscribeOutput', taskId });
    const sizes = [0, 1, 125 - 90, 126, 200, 65_535 - 90, 65_536, 70_000, 1024 * 1024];
    for (const size of sizes) {
      await server.app.mesh.taskOutput.publish({
        taskId,
        ownerId: owner.ownerId,
        messageType: 'raw',
        content: 'é'.repeat(size / 2) + 'x'.repeat(size % 2),
        isPartial: false,
      });
    }
    for (const size of sizes) assert.equal(Buffer.byteLength(String((await client.next()).content)), size);
    await client.close();
  });

  test('one notification reaches a client once, however many subscriptions match', async () => {
    const client = await server.connect(owner.key);
    await client.request({ type: 'subscribeAll' });
    await client.request({ type: 'subscribe', taskId });
    await client.request({ type: 'subscribeOutput', taskId });
    await server.app.mesh.taskUpdates.publish(update(taskId, 10, { ownerId: owner.ownerId }));
    await server.app.mesh.taskUpdates.publish(update(taskId, 11, { ownerId: owner.ownerId }));
    assert.equal((await client.next()).version, 10);
    assert.equal((await client.next()).version, 11);
    assert.equal(client.pending.length, 0);
    await client.close();
  });

  test('frames for one task arrive in publish order, with and without a known owner', async () => {
    const fresh = await server.task(owner.ownerId);
    const client = await server.connect(owner.key);
    await client.request({ type: 'subscribeAll' });
    const published: Promise<unknown>[] = [];
    for (let version = 1; version <= 200; version++) {
      // Every third one leaves the owner out; the first does too, so it waits on a lookup while
      // the ones behind it already know their owner.
      const extra = version % 3 === 1 ? {} : { ownerId: owner.ownerId };
      published.push(server.app.mesh.taskUpdates.publish(update(fresh, version, extra)));
    }
    await Promise.all(published);
    for (let version = 1; version <= 200; version++) assert.equal((await client.next()).version, version);
    await client.close();
  });

  test('sockets sharing a turn each get exactly their own frames, in publish order', async () => {
    const [t1, t2] = [await server.task(owner.ownerId), await server.task(owner.ownerId)];
    const [a, b, c] = [await server.connect(owner.key), await server.connect(owner.key), await server.connect(owner.key)];
    await a.request({ type: 'subscribeAll' });
    await b.request({ type: 'subscribeAll' });
    await c.request({ type: 'subscribe', taskId: t1 });
    await c.request({ type: 'subscribeOutput', taskId: t2 });
    // One synchronous burst: every frame below leaves in the same loop turn. The large chunk takes
    // c's turn past the size up to which a turn's frames are joined into one buffer.
    const expectedAll: string[] = [];
    const expectedC: string[] = [];
    const burst: Promise<unknown>[] = [];
    for (let i = 1; i <= 30; i++) {
      const taskId = i % 2 ? t1 : t2;
      burst.push(server.app.mesh.taskUpdates.publish(update(taskId, i, { ownerId: owner.ownerId })));
      expectedAll.push(`update ${taskId} ${i}`);
      if (taskId === t1) expectedC.push(`update ${taskId} ${i}`);
      const content = i === 15 ? 'z'.repeat(300 * 1024) : `chunk ${i}`;
      burst.push(
        server.app.mesh.taskOutput.publish({ taskId: t2, ownerId: owner.ownerId, messageType: 'assistant', content, isPartial: false }),
      );
      expectedC.push(`output ${t2} ${content.length}`);
    }
    await Promise.all(burst);
    const label = (m: Record<string, unknown>) =>
      m.type === 'taskUpdated' ? `update ${m.taskId} ${m.version}` : `output ${m.taskId} ${String(m.content).length}`;
    const take = async (client: typeof a, count: number) => {
      const got: string[] = [];
      for (let i = 0; i < count; i++) got.push(label(await client.next()));
      return got;
    };
    assert.deepEqual(await take(a, expectedAll.length), expectedAll);
    assert.deepEqual(await take(b, expectedAll.length), expectedAll);
    assert.deepEqual(await take(c, expectedC.length), expectedC);
    for (const client of [a, b, c]) {
      assert.equal(client.pending.length, 0);
      await client.close();
    }
  });

  test('subscribeAll carries task updates only; output needs subscribeOutput', async () => {
    const client = await server.connect(owner.key);
    await client.request({ type: 'subscribeAll' });
    await server.app.mesh.taskOutput.publish({ taskId, ownerId: owner.ownerId, messageType: 'raw', content: 'a', isPartial: false });
    await server.app.mesh.taskUpdates.publish(update(taskId, 20, { ownerId: owner.ownerId }));
    // Had the output been delivered, it would have come first.
    assert.equal((await client.next()).type, 'taskUpdated');
    await client.close();
  });

  test('unsubscribe, unsubscribeOutput and unsubscribeAll stop their streams', async () => {
    const client = await server.connect(owner.key);
    await client.request({ type: 'subscribe', taskId });
    await client.request({ type: 'subscribeOutput', taskId });
    await client.request({ type: 'subscribeAll' });
    await client.request({ type: 'unsubscribe', taskId });
    await client.request({ type: 'unsubscribeAll' });
    await client.request({ type: 'unsubscribeOutput', taskId });
    await server.app.mesh.taskUpdates.publish(update(taskId, 30, { ownerId: owner.ownerId }));
    await server.app.mesh.taskOutput.publish({ taskId, ownerId: owner.ownerId, messageType: 'raw', content: 'a', isPartial: false });
    // A marker on another subscription proves nothing arrived before it.
    const marker = await server.task(owner.ownerId);
    await client.request({ type: 'subscribe', taskId: marker });
    await server.app.mesh.taskUpdates.publish(update(marker, 1, { ownerId: owner.ownerId }));
    const next = await client.next();
    assert.equal(next.taskId, marker);
    assert.equal(next.type, 'taskUpdated');
    await client.close();
  });

  test('in-process listeners get each event with its owner settled', async () => {
    const seen: unknown[] = [];
    let delivered!: () => void;
    const first = new Promise<void>((resolve) => (delivered = resolve));
    const stop = server.app.mesh.taskUpdates.subscribe((e) => {
      seen.push(e);
      delivered();
    });
    const cursor = await server.app.mesh.taskUpdates.publish(update(taskId, 40));
    await first;
    stop();
    await server.app.mesh.taskUpdates.publish(update(taskId, 41));
    // Once 42 reaches a client, 41 (same task, earlier in the log) has been through the listeners.
    const client = await server.connect(owner.key);
    await client.request({ type: 'subscribe', taskId });
    await server.app.mesh.taskUpdates.publish(update(taskId, 42));
    assert.equal((await client.next()).version, 42);
    await client.close();
    assert.deepEqual(seen, [{ ...update(taskId, 40), ownerId: owner.ownerId, cursor }]);
  });

  test('output that no socket follows (so it is never framed) still reaches in-process listeners, and another owner’s socket gets none of it', async () => {
    const other = await server.owner();
    const watcher = await server.connect(other.key);
    await watcher.request({ type: 'subscribeAll' });
    const unwatched = await server.task(owner.ownerId);
    const output = { taskId: unwatched, messageType: 'assistant', content: 'nobody follows this \u0000', isPartial: false };
    const heard: unknown[] = [];
    const stop = server.app.mesh.taskOutput.subscribe((e) => heard.push(JSON.parse(JSON.stringify(e))));
    const cursor = await server.app.mesh.taskOutput.publish({ ...output, ownerId: owner.ownerId });
    // The other owner’s socket: its own task’s update, logged after the output, is the first frame it
    // gets; by then the output has been through the listeners (one pipeline, in log order).
    const own = await server.task(other.ownerId);
    await server.app.mesh.taskUpdates.publish(update(own, 1));
    assert.equal((await watcher.next()).taskId, own);
    stop();
    // Optional fields the publisher left out come as undefined: compared as JSON, as a frame would carry them.
    assert.deepEqual(heard, [{ ...output, ownerId: owner.ownerId, cursor }]);
    await watcher.close();
  });
});
