/**
 * The example host's task routes: validation, ownership, and the events they publish.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { startTestServer, type TestServer } from './helpers/server.js';

let server: TestServer;
let alice: { ownerId: string; key: string };
let bob: { ownerId: string; key: string };
let admin: { key: string };

before(async () => {
  server = await startTestServer();
  alice = await server.owner();
  bob = await server.owner();
  admin = await server.admin();
});
after(() => server.close());

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

describe('POST /api/v1/mesh/tasks', () => {
  test('creates a task owned by the caller and announces it to subscribeAll', async () => {
    const client = await server.connect(alice.key);
    await client.request({ type: 'subscribeAll' });
    const res = await server.http('POST', '/api/v1/mesh/tasks', alice.key, { name: 'write tests' });
    assert.equal(res.status, 201);
    assert.match(res.body.id, UUID);
    assert.equal(res.body.ownerId, alice.ownerId);
    assert.equal(res.body.status, 'pending');
    assert.equal(res.body.version, 1);
    const { cursor, ...frame } = await client.next();
    assert.deepEqual(frame, {
      type: 'taskUpdated',
      taskId: res.body.id,
      version: 1,
      status: 'pending',
      updatedFields: ['name', 'status'],
      updatedBy: alice.ownerId,
    });
    assert.equal(typeof cursor, 'string');
    await client.close();
  });

  test('bad bodies get 400 with a stable code', async () => {
    for (const body of [{}, { name: '' }, { name: 5 }, { name: 'x', extra: 1 }, { name: 'x', status: '' }, '{"name":']) {
      const res = await server.http('POST', '/api/v1/mesh/tasks', alice.key, body);
      assert.equal(res.status, 400, JSON.stringify(body));
      assert.ok(['VALIDATION_ERROR', 'FST_ERR_CTP_INVALID_JSON_BODY'].includes(res.body.code) || res.body.code, JSON.stringify(res.body));
      assert.equal(typeof res.body.message, 'string');
      assert.equal(res.body.stack, undefined);
    }
  });

  test('only admins may set ownerId, and may create ownerless tasks', async () => {
    const denied = await server.http('POST', '/api/v1/mesh/tasks', alice.key, { name: 'x', ownerId: bob.ownerId });
    assert.equal(denied.status, 403);
    const forBob = await server.http('POST', '/api/v1/mesh/tasks', admin.key, { name: 'x', ownerId: bob.ownerId.toUpperCase() });
    assert.equal(forBob.status, 201);
    assert.equal(forBob.body.ownerId, bob.ownerId);
    const orphan = await server.http('POST', '/api/v1/mesh/tasks', admin.key, { name: 'x' });
    assert.equal(orphan.body.ownerId, null);
  });

  test('401 without a valid key', async () => {
    assert.equal((await server.http('POST', '/api/v1/mesh/tasks', undefined, { name: 'x' })).status, 401);
    assert.equal((await server.http('POST', '/api/v1/mesh/tasks', 'mk_bogus', { name: 'x' })).status, 401);
  });
});

describe('PATCH /api/v1/mesh/tasks/:id', () => {
  test('bumps the version and publishes taskUpdated naming only the changed fields', async () => {
    const id = await server.task(alice.ownerId, 'old name');
    const client = await server.connect(alice.key);
    await client.request({ type: 'subscribe', taskId: id });
    const res = await server.http('PATCH', `/api/v1/mesh/tasks/${id}`, alice.key, { status: 'running', name: 'old name' });
    assert.equal(res.status, 200);
    assert.equal(res.body.version, 2);
    assert.equal(res.body.status, 'running');
    const { cursor: _, ...frame } = await client.next();
    assert.deepEqual(frame, {
      type: 'taskUpdated',
      taskId: id,
      version: 2,
      status: 'running',
      updatedFields: ['status'],
      updatedBy: alice.ownerId,
    });
    const both = await server.http('PATCH', `/api/v1/mesh/tasks/${id}`, alice.key, { status: 'done', name: 'new name' });
    assert.equal(both.body.version, 3);
    assert.deepEqual((await client.next()).updatedFields, ['name', 'status']);
    await client.close();
  });

  test('a body that changes nothing changes nothing and publishes nothing', async () => {
    const id = await server.task(alice.ownerId, 'same');
    const client = await server.connect(alice.key);
    await client.request({ type: 'subscribe', taskId: id });
    const res = await server.http('PATCH', `/api/v1/mesh/tasks/${id}`, alice.key, { name: 'same' });
    assert.equal(res.status, 200);
    assert.equal(res.body.version, 1);
    await server.http('PATCH', `/api/v1/mesh/tasks/${id}`, alice.key, { status: 'x' });
    assert.equal((await client.next()).version, 2);
    await client.close();
  });

  test("another owner's task is 404, as is a missing one; admins may change any", async () => {
    const id = await server.task(bob.ownerId);
    assert.equal((await server.http('PATCH', `/api/v1/mesh/tasks/${id}`, alice.key, { status: 'x' })).status, 404);
    assert.equal((await server.http('PATCH', `/api/v1/mesh/tasks/${randomUUID()}`, alice.key, { status: 'x' })).status, 404);
    const res = await server.http('PATCH', `/api/v1/mesh/tasks/${id}`, admin.key, { status: 'x' });
    assert.equal(res.status, 200);
    assert.equal(res.body.updatedAt >= res.body.createdAt, true);
  });

  test('bad bodies and ids get 400', async () => {
    const id = await server.task(alice.ownerId);
    for (const body of [{}, { status: 3 }, { version: 9 }, { name: 'x'.repeat(201) }]) {
      assert.equal((await server.http('PATCH', `/api/v1/mesh/tasks/${id}`, alice.key, body)).status, 400, JSON.stringify(body));
    }
    assert.equal((await server.http('PATCH', '/api/v1/mesh/tasks/not-a-uuid', alice.key, { status: 'x' })).status, 400);
  });
});

describe('POST /api/v1/mesh/tasks/:id/output', () => {
  test('publishes taskOutput with isPartial defaulting to false; 202', async () => {
    const id = await server.task(alice.ownerId);
    const client = await server.connect(alice.key);
    await client.request({ type: 'subscribeOutput', taskId: id });
    const res = await server.http('POST', `/api/v1/mesh/tasks/${id}/output`, alice.key, { messageType: 'assistant', content: 'thinking…' });
    assert.equal(res.status, 202);
    assert.deepEqual(await client.next(), {
      type: 'taskOutput',
      taskId: id,
      messageType: 'assistant',
      content: 'thinking…',
      isPartial: false,
      cursor: res.body.cursor,
    });
    const second = await server.http('POST', `/api/v1/mesh/tasks/${id}/output`, alice.key, {
      messageType: 'result',
      content: 'done',
      costUsd: 0.5,
      durationMs: 1200,
      isError: false,
      isPartial: true,
    });
    assert.deepEqual(await client.next(), {
      type: 'taskOutput',
      taskId: id,
      messageType: 'result',
      content: 'done',
      isError: false,
      costUsd: 0.5,
      durationMs: 1200,
      isPartial: true,
      cursor: second.body.cursor,
    });
    await client.close();
  });

  test("404 for another owner's task; 400 for a bad body", async () => {
    const id = await server.task(bob.ownerId);
    assert.equal(
      (await server.http('POST', `/api/v1/mesh/tasks/${id}/output`, alice.key, { messageType: 'raw', content: 'x' })).status,
      404,
    );
    const own = await server.task(alice.ownerId);
    for (const body of [
      { content: 'x' },
      { messageType: 'raw' },
      { messageType: 'raw', content: 'x', durationMs: 1.5 },
      { messageType: 'raw', content: 'x', isPartial: 'yes' },
    ]) {
      assert.equal((await server.http('POST', `/api/v1/mesh/tasks/${own}/output`, alice.key, body)).status, 400, JSON.stringify(body));
    }
  });
});

describe('GET /api/v1/mesh/tasks/:id and /healthz', () => {
  test('reads a visible task; 404 otherwise', async () => {
    const id = await server.task(alice.ownerId, 'readable');
    const res = await server.http('GET', `/api/v1/mesh/tasks/${id}`, alice.key);
    assert.equal(res.body.name, 'readable');
    assert.equal((await server.http('GET', `/api/v1/mesh/tasks/${id}`, bob.key)).status, 404);
  });

  test('healthz answers 200 with the database reachable', async () => {
    const res = await server.http('GET', '/healthz', undefined);
    assert.deepEqual(res, { status: 200, body: { status: 'ok' } });
  });
});

describe('GET /api/v1/mesh/tasks', () => {
  test('the caller’s tasks, newest first, page by page with no task twice or missed; bad paging is a 400', async () => {
    const { ownerId, key } = await server.owner();
    const mine: string[] = [];
    for (let i = 0; i < 7; i++) mine.unshift(await server.task(ownerId, `t${i}`));
    await server.task(null, 'not mine');
    const seen: string[] = [];
    let after: string | null = null;
    do {
      const page: { status: number; body: { tasks: { id: string; ownerId: string }[]; next: string | null } } = await server.http(
        'GET',
        `/api/v1/mesh/tasks?limit=3${after ? `&after=${after}` : ''}`,
        key,
      );
      assert.equal(page.status, 200);
      assert.ok(page.body.tasks.length <= 3);
      assert.ok(page.body.tasks.every((t) => t.ownerId === ownerId));
      seen.push(...page.body.tasks.map((t) => t.id));
      after = page.body.next;
    } while (after);
    assert.deepEqual(seen, mine);
    for (const query of [
      'limit=0',
      'limit=101',
      'limit=x',
      'after=%2F%2F',
      `after=${Buffer.from('nope|nope').toString('base64url')}`,
      'other=1',
    ]) {
      const res = await server.http('GET', `/api/v1/mesh/tasks?${query}`, key);
      assert.equal(res.status, 400, query);
      assert.equal(res.body.code, 'VALIDATION_ERROR');
    }
    assert.equal((await server.http('GET', '/api/v1/mesh/tasks', undefined)).status, 401);
  });
});

test('an unknown path answers 404 in the API’s error shape', async () => {
  const res = await server.http('GET', '/api/v1/nope?secret=1', undefined);
  assert.equal(res.status, 404);
  assert.deepEqual(res.body, { code: 'NOT_FOUND', message: 'no route GET /api/v1/nope' });
});
