/**
 * Where we deliberately differ from the Rust server: authentication on the upgrade, ownership checks
 * that fail closed, owner-scoped subscribeAll, and owner lookups for publishers that omit it.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { revokeApiKey } from '../example/src/api-keys.js';
import { deliveries } from './helpers/delivered.js';
import { startTestServer, type TestServer } from './helpers/server.js';
import { TestClient, refusal, type Frame } from './helpers/ws-client.js';

let server: TestServer;
let alice: { ownerId: string; key: string };
let bob: { ownerId: string; key: string };
let admin: { key: string };
let aliceTask: string;
let bobTask: string;
let orphanTask: string;

before(async () => {
  server = await startTestServer();
  alice = await server.owner();
  bob = await server.owner();
  admin = await server.admin();
  aliceTask = await server.task(alice.ownerId);
  bobTask = await server.task(bob.ownerId);
  orphanTask = await server.task(null);
});
after(() => server.close());

const update = (taskId: string, version: number, ownerId?: string | null) => ({
  taskId,
  ...(ownerId === undefined ? {} : { ownerId }),
  version,
  status: 'done',
  updatedFields: ['status'],
  updatedBy: 'test',
});

describe('authentication on the upgrade', () => {
  test('no key: 401 before any 101', async () => {
    const { status, body } = await refusal(TestClient.connect(server.wsUrl));
    assert.equal(status, 401);
    assert.equal(JSON.parse(body).code, 'UNAUTHORIZED');
  });

  test('an unknown key: 401', async () => {
    assert.equal((await refusal(server.connect('mk_not-a-key'))).status, 401);
  });

  test('a revoked key: 401', async () => {
    const { key } = await server.owner();
    await revokeApiKey(server.db.sql, key);
    assert.equal((await refusal(server.connect(key))).status, 401);
  });

  test('Authorization: Bearer works like x-makima-api-key', async () => {
    const client = await server.connect(undefined, { authorization: `Bearer ${alice.key}` });
    assert.deepEqual(await client.request({ type: 'subscribe', taskId: aliceTask }), { type: 'subscribed', taskId: aliceTask });
    await client.close();
  });

  test('a plain GET (no upgrade) gets 426 once authenticated', async () => {
    const res = await server.http('GET', '/api/v1/mesh/tasks/subscribe', alice.key);
    assert.equal(res.status, 426);
    assert.equal(res.body.code, 'UPGRADE_REQUIRED');
  });
});

describe('subscribe and subscribeOutput fail closed on ownership', () => {
  for (const type of ['subscribe', 'subscribeOutput'] as const) {
    test(`${type}: another owner's task is NOT_FOUND, like a task that does not exist`, async () => {
      const client = await server.connect(alice.key);
      const foreign = await client.request({ type, taskId: bobTask });
      const missing = await client.request({ type, taskId: randomUUID() });
      assert.equal(foreign.code, 'NOT_FOUND');
      assert.equal(missing.code, 'NOT_FOUND');
      assert.equal(String(foreign.message).replace(bobTask, 'ID'), String(missing.message).replace(/[0-9a-f-]{36}/, 'ID'));
      await client.close();
    });

    test(`${type}: a task without owner is NOT_FOUND for owners, visible to admins`, async () => {
      const owner = await server.connect(alice.key);
      assert.equal((await owner.request({ type, taskId: orphanTask })).code, 'NOT_FOUND');
      const root = await server.connect(admin.key);
      assert.equal((await root.request({ type, taskId: orphanTask })).taskId, orphanTask);
      assert.equal((await root.request({ type, taskId: bobTask })).taskId, bobTask);
      await owner.close();
      await root.close();
    });
  }

  test('a refused subscribe delivers nothing of that task', async () => {
    const client = await server.connect(alice.key);
    await client.request({ type: 'subscribe', taskId: bobTask });
    await client.request({ type: 'subscribeOutput', taskId: bobTask });
    await client.request({ type: 'subscribe', taskId: aliceTask });
    await server.app.mesh.taskUpdates.publish(update(bobTask, 1, bob.ownerId));
    await server.app.mesh.taskOutput.publish({ taskId: bobTask, messageType: 'raw', content: 'secret', isPartial: false });
    await server.app.mesh.taskUpdates.publish(update(aliceTask, 1, alice.ownerId));
    const next = await client.next();
    assert.equal(next.taskId, aliceTask);
    await client.close();
  });
});

describe('subscribeAll is scoped to what the principal may see', () => {
  async function collect(client: TestClient, count: number): Promise<Frame[]> {
    const frames: Frame[] = [];
    for (let i = 0; i < count; i++) frames.push(await client.next());
    return frames;
  }

  test('owners get their own tasks, admins get every task including ownerless ones', async () => {
    const a = await server.connect(alice.key);
    const b = await server.connect(bob.key);
    const root = await server.connect(admin.key);
    for (const c of [a, b, root]) assert.deepEqual(await c.request({ type: 'subscribeAll' }), { type: 'subscribedAll' });

    await server.app.mesh.taskUpdates.publish(update(aliceTask, 100, alice.ownerId));
    await server.app.mesh.taskUpdates.publish(update(bobTask, 101, bob.ownerId));
    await server.app.mesh.taskUpdates.publish(update(orphanTask, 102, null));
    // Each principal's own closing marker: had anything else reached it, it would come before.
    await server.app.mesh.taskUpdates.publish(update(aliceTask, 199, alice.ownerId));
    await server.app.mesh.taskUpdates.publish(update(bobTask, 299, bob.ownerId));

    assert.deepEqual(
      (await collect(a, 2)).map((f) => f.version),
      [100, 199],
    );
    assert.deepEqual(
      (await collect(b, 2)).map((f) => f.version),
      [101, 299],
    );
    assert.deepEqual(
      (await collect(root, 5)).map((f) => f.version),
      [100, 101, 102, 199, 299],
    );
    for (const c of [a, b, root]) await c.close();
  });

  test('a principal that owns nothing and is no admin sees nothing', async () => {
    const { createApiKey } = await import('../example/src/api-keys.js');
    const nobody = await createApiKey(server.db.sql, { ownerId: null, admin: false });
    const client = await server.connect(nobody);
    assert.deepEqual(await client.request({ type: 'subscribeAll' }), { type: 'subscribedAll' });
    assert.equal((await client.request({ type: 'subscribe', taskId: orphanTask })).code, 'NOT_FOUND');
    const delivered = deliveries(server.app);
    const cursors = [
      await server.app.mesh.taskUpdates.publish(update(orphanTask, 1, null)),
      await server.app.mesh.taskUpdates.publish(update(aliceTask, 1, alice.ownerId)),
    ];
    // publish() resolves once logged: both have reached the sockets only now. Before, the
    // unsubscribeAll below could come first (this test then proved nothing), and alice's event reach
    // the next test's subscribeAll.
    for (const cursor of cursors) await delivered(cursor);
    // Nothing can arrive; a frame it does get proves the socket is alive and nothing came before.
    assert.deepEqual(await client.request({ type: 'unsubscribeAll' }), { type: 'unsubscribedAll' });
    await client.close();
  });
});

describe('publishers that leave ownerId out', () => {
  test('the owner is looked up: the owner gets it, another owner does not', async () => {
    const fresh = await server.task(alice.ownerId);
    const a = await server.connect(alice.key);
    const b = await server.connect(bob.key);
    await a.request({ type: 'subscribeAll' });
    await b.request({ type: 'subscribeAll' });
    await server.app.mesh.taskUpdates.publish(update(fresh, 1));
    await server.app.mesh.taskUpdates.publish(update(bobTask, 2, bob.ownerId));
    assert.equal((await a.next()).taskId, fresh);
    assert.equal((await b.next()).taskId, bobTask);
    await a.close();
    await b.close();
  });

  test('an event for a task the database does not know reaches admins only', async () => {
    const ghost = randomUUID();
    const a = await server.connect(alice.key);
    const root = await server.connect(admin.key);
    await a.request({ type: 'subscribeAll' });
    await root.request({ type: 'subscribeAll' });
    await server.app.mesh.taskUpdates.publish(update(ghost, 1));
    await server.app.mesh.taskUpdates.publish(update(aliceTask, 2, alice.ownerId));
    // Only per-task order is promised: the ghost waits on its lookup, alice's task does not.
    assert.deepEqual(new Set([(await root.next()).taskId, (await root.next()).taskId]), new Set([ghost, aliceTask]));
    assert.equal((await a.next()).taskId, aliceTask);
    assert.equal(a.pending.length, 0);
    await a.close();
    await root.close();
  });

  test('an event whose owner differs from the one seen at subscribe time is withheld', async () => {
    const moved = await server.task(alice.ownerId);
    const a = await server.connect(alice.key);
    await a.request({ type: 'subscribe', taskId: moved });
    await a.request({ type: 'subscribeOutput', taskId: moved });
    await server.db.sql`UPDATE tasks SET owner_id = ${bob.ownerId} WHERE id = ${moved}`;
    await server.app.mesh.taskUpdates.publish(update(moved, 2, bob.ownerId));
    await server.app.mesh.taskOutput.publish({ taskId: moved, ownerId: bob.ownerId, messageType: 'raw', content: 'x', isPartial: false });
    assert.deepEqual(await a.request({ type: 'subscribe', taskId: aliceTask }), { type: 'subscribed', taskId: aliceTask });
    // Events whose owner is given are delivered in log order: had the moved task's frames been
    // delivered, they would come before this one.
    await server.app.mesh.taskUpdates.publish(update(aliceTask, 4, alice.ownerId));
    assert.equal((await a.next()).version, 4);
    await a.close();
  });
});
