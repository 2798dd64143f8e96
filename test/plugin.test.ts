/**
 * The plugin as a host mounts it: option checks at registration, the decorator, a host that
 * registered @fastify/websocket itself, a custom prefix, and shutdown.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import fastifyWebsocket from '@fastify/websocket';
import Fastify, { type FastifyInstance } from 'fastify';
import meshSubscriptions, { CloseCode, MeshOptionsError, MeshPublishError, type Principal } from '../src/index.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { TestClient, refusal } from './helpers/ws-client.js';

let db: TestDatabase;
before(async () => {
  db = await createTestDatabase();
});
after(() => db.drop());

const admin: Principal = { ownerId: null, admin: true };
const allowAdmin = async () => admin;

async function listen(app: FastifyInstance, path = '/api/v1/mesh/tasks/subscribe'): Promise<string> {
  await app.listen({ host: '127.0.0.1', port: 0 });
  return `ws://127.0.0.1:${(app.server.address() as { port: number }).port}${path}`;
}

describe('options are checked at registration', () => {
  const cases: Array<[string, unknown, RegExp]> = [
    ['no authenticate', { sql: () => {} }, /authenticate/],
    ['authenticate not a function', { authenticate: 'yes', resolveOwners: async () => new Map() }, /authenticate/],
    ['neither sql nor resolveOwners', { authenticate: allowAdmin }, /sql.*resolveOwners/],
    ['a prefix without leading slash', { authenticate: allowAdmin, resolveOwners: async () => new Map(), prefix: 'api' }, /prefix/],
    ['a prefix with a trailing slash', { authenticate: allowAdmin, resolveOwners: async () => new Map(), prefix: '/api/' }, /prefix/],
    [
      'a table name that is not an identifier',
      { authenticate: allowAdmin, sql: () => {}, tasksTable: 'tasks; DROP TABLE x' },
      /tasksTable/,
    ],
    [
      'a negative lookup timeout',
      { authenticate: allowAdmin, resolveOwners: async () => new Map(), lookupTimeoutMs: -1 },
      /lookupTimeoutMs/,
    ],
    ['a fractional cache size', { authenticate: allowAdmin, resolveOwners: async () => new Map(), ownerCacheSize: 1.5 }, /ownerCacheSize/],
  ];
  for (const [name, options, message] of cases) {
    test(name, async () => {
      const app = Fastify();
      await assert.rejects(
        async () => {
          await app.register(meshSubscriptions, options as never);
          await app.ready();
        },
        (error: unknown) => error instanceof MeshOptionsError && message.test(error.message),
      );
      await app.close();
    });
  }
});

describe('mounting', () => {
  test('works when the host registered @fastify/websocket first, with resolveOwners instead of sql', async () => {
    const taskId = randomUUID();
    const ownerId = randomUUID();
    const app = Fastify();
    await app.register(fastifyWebsocket);
    await app.register(meshSubscriptions, {
      authenticate: async () => ({ ownerId, admin: false }),
      resolveOwners: async (ids) => new Map(ids.filter((id) => id === taskId).map((id) => [id, ownerId])),
      prefix: '/v2',
    });
    const url = await listen(app, '/v2/mesh/tasks/subscribe');
    const client = await TestClient.connect(url);
    assert.deepEqual(await client.request({ type: 'subscribe', taskId }), { type: 'subscribed', taskId });
    assert.equal((await client.request({ type: 'subscribe', taskId: randomUUID() })).code, 'NOT_FOUND');
    await app.mesh.taskUpdates.publish({ taskId, version: 1, status: 's', updatedFields: [], updatedBy: 'x' });
    assert.equal((await client.next()).type, 'taskUpdated');
    assert.equal(app.mesh.stats().connections, 1);
    await client.close();
    await app.close();
  });

  test('authenticate that answers something that is not a principal refuses with 401; one that throws answers 503', async () => {
    for (const [authenticate, status] of [
      [
        async () => {
          throw new Error('token service down');
        },
        503,
      ],
      [async () => ({ ownerId: 'not-a-uuid', admin: false }), 401],
      [async () => ({ ownerId: null }) as unknown as Principal, 401],
    ] as const) {
      const app = Fastify();
      await app.register(meshSubscriptions, { authenticate, sql: db.sql });
      const url = await listen(app);
      try {
        assert.equal((await refusal(TestClient.connect(url))).status, status);
      } finally {
        await app.close();
      }
    }
  });

  test('publish rejects a malformed notification at once, with a clear error', async () => {
    const app = Fastify();
    await app.register(meshSubscriptions, { authenticate: allowAdmin, sql: db.sql });
    await app.ready();
    assert.throws(() => app.mesh.taskUpdates.publish({ taskId: 'nope' } as never), MeshPublishError);
    assert.throws(() => app.mesh.taskOutput.publish({ taskId: randomUUID(), messageType: 'raw', content: 'x' } as never), /isPartial/);
    await app.close();
  });

  test('a frame over maxPayload closes with 1009, whoever registered @fastify/websocket', async () => {
    for (const hostWebsocket of [false, true]) {
      const app = Fastify();
      if (hostWebsocket) await app.register(fastifyWebsocket);
      await app.register(meshSubscriptions, { authenticate: allowAdmin, sql: db.sql, maxPayload: 1024 });
      const url = await listen(app);
      const client = await TestClient.connect(url);
      const fits = JSON.stringify({ type: 'subscribeAll', pad: 'x'.repeat(900) });
      assert.deepEqual(await client.request(fits), { type: 'subscribedAll' });
      client.send(JSON.stringify({ type: 'subscribeAll', pad: 'x'.repeat(2000) }));
      assert.equal((await client.closed).code, CloseCode.MESSAGE_TOO_BIG);
      await app.close();
    }
  });

  test('app.close() closes every socket with 1001', async () => {
    const app = Fastify();
    await app.register(meshSubscriptions, { authenticate: allowAdmin, sql: db.sql });
    const url = await listen(app);
    const clients = await Promise.all([TestClient.connect(url), TestClient.connect(url)]);
    for (const c of clients) await c.request({ type: 'subscribeAll' });
    await app.close();
    for (const c of clients) assert.equal((await c.closed).code, CloseCode.GOING_AWAY);
    assert.equal(app.mesh.stats().connections, 0);
  });

  // With a queue shared by all tasks this test would hang on the other task's publish: the timeout makes that a failure.
  test('an event waiting on a slow owner lookup holds up its own task only', { timeout: 10_000 }, async () => {
    const slowTask = randomUUID();
    const otherTask = randomUUID();
    let answer!: (owners: Map<string, string | null>) => void;
    const app = Fastify();
    await app.register(meshSubscriptions, {
      authenticate: allowAdmin,
      resolveOwners: (ids) => {
        if (ids.includes(slowTask)) return new Promise((resolve) => (answer = resolve));
        return Promise.resolve(new Map(ids.map((id) => [id, null])));
      },
    });
    const client = await TestClient.connect(await listen(app));
    await client.request({ type: 'subscribeAll' });
    const update = (taskId: string, version: number, ownerId?: null) => ({
      taskId,
      ownerId,
      version,
      status: 's',
      updatedFields: [],
      updatedBy: 't',
    });
    const slow = app.mesh.taskUpdates.publish({ ...update(slowTask, 1), ownerId: undefined });
    void app.mesh.taskUpdates.publish({ ...update(slowTask, 2), ownerId: null });
    await app.mesh.taskUpdates.publish(update(otherTask, 1, null));
    // The other task's event arrives while the slow task's lookup is still unanswered.
    assert.deepEqual([(await client.next()).taskId, answer !== undefined], [otherTask, true]);
    answer(new Map([[slowTask, null]]));
    await slow;
    // Then the slow task's events, in publish order.
    assert.deepEqual([(await client.next()).version, (await client.next()).version], [1, 2]);
    await client.close();
    await app.close();
  });

  test('a closed socket frees its subscriptions', async () => {
    const app = Fastify();
    const taskId = randomUUID();
    await app.register(meshSubscriptions, {
      authenticate: allowAdmin,
      resolveOwners: async (ids) => new Map(ids.map((id) => [id, null])),
    });
    const url = await listen(app);
    const client = await TestClient.connect(url);
    await client.request({ type: 'subscribeAll' });
    await client.request({ type: 'subscribe', taskId });
    await client.request({ type: 'subscribeOutput', taskId });
    assert.deepEqual(app.mesh.stats(), { connections: 1, tasks: 1, outputs: 1, ownersAll: 0, adminsAll: 1 });
    await client.close();
    // The server sees the close in its own callback; wait for it turn by turn, not by the clock.
    for (let turns = 0; app.mesh.stats().connections > 0 && turns < 10_000; turns++) await new Promise(setImmediate);
    assert.deepEqual(app.mesh.stats(), { connections: 0, tasks: 0, outputs: 0, ownersAll: 0, adminsAll: 0 });
    await app.close();
  });
});
