/**
 * The database goes away and comes back: subscribes that need a lookup answer UNAVAILABLE within
 * the lookup timeout (never a crash, never fail-open), a publish whose owner cannot be settled is
 * refused as an outage, and everything works again once it is
 * back, without a restart. The lookup tests use the memory bus, so that events still flow while
 * the database is gone; with the PostgreSQL bus events go through the database, and the last
 * tests show that a restart of it, or a LISTEN connection gone mute, costs no event.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { after, before, test } from 'node:test';
import Fastify from 'fastify';
import pino from 'pino';
import postgres from 'postgres';
import meshSubscriptions, { MeshBusUnavailableError, type MeshSubscriptionsOptions } from '../src/index.js';
import { buildApp } from '../example/src/app.js';
import { createApiKey } from '../example/src/api-keys.js';
import { scratchDirectory, startEmbeddedPostgres, type EmbeddedDatabase } from '../example/src/embedded-postgres.js';
import { migrate } from '../example/src/migrations.js';
import { TestClient } from './helpers/ws-client.js';

const log = pino({ level: 'silent' });
let scratch: string;
let database: EmbeddedDatabase | undefined;
/** A backend a test stopped: continued at the end even if that test timed out, or the server could not stop. */
let stoppedBackend: number | undefined;

before(async () => {
  scratch = await scratchDirectory('outage-test');
});
after(async () => {
  if (stoppedBackend) process.kill(stoppedBackend, 'SIGCONT');
  await database?.stop();
  await rm(scratch, { recursive: true, force: true });
});

test('a database stopped mid-test: UNAVAILABLE, no crash, admins-only delivery; back to normal once it returns', async () => {
  database = await startEmbeddedPostgres({ dir: scratch, log });
  const port = Number(new URL(database.url).port);
  const sql = postgres(database.url, { max: 4, connect_timeout: 2, onnotice: () => {} });
  await migrate(sql);
  const app = await buildApp({ sql, logger: false, mesh: { lookupTimeoutMs: 1_000, bus: 'memory' } });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const wsUrl = `ws://127.0.0.1:${(app.server.address() as { port: number }).port}/api/v1/mesh/tasks/subscribe`;
  const ownerId = crypto.randomUUID();
  const key = await createApiKey(sql, { ownerId, admin: false });
  const [known, unknown] = await Promise.all(
    [1, 2].map(async () => (await sql<{ id: string }[]>`INSERT INTO tasks (owner_id) VALUES (${ownerId}) RETURNING id::text AS id`)[0]!.id),
  );
  const client = await TestClient.connect(wsUrl, { 'x-makima-api-key': key });
  await client.request({ type: 'subscribe', taskId: known });
  await client.request({ type: 'subscribeAll' });

  await database.stop();

  const refused = await client.request({ type: 'subscribe', taskId: unknown! });
  assert.deepEqual([refused.type, refused.code], ['error', 'UNAVAILABLE']);
  // Events that name their owner keep flowing; one whose owner cannot be settled is not published,
  // and the publisher is told (no guess, no cached answer decides who sees it).
  await assert.rejects(
    app.mesh.taskUpdates.publish({ taskId: unknown!, version: 1, status: 's', updatedFields: [], updatedBy: 't' }),
    MeshBusUnavailableError,
  );
  await app.mesh.taskUpdates.publish({ taskId: known!, ownerId, version: 2, status: 's', updatedFields: [], updatedBy: 't' });
  assert.equal((await client.next()).version, 2);
  const base = wsUrl.replace('ws', 'http').replace('/api/v1/mesh/tasks/subscribe', '');
  assert.equal((await fetch(`${base}/readyz`)).status, 503, 'not ready without its database');
  assert.equal((await fetch(`${base}/healthz`)).status, 200, 'but alive');

  database = await startEmbeddedPostgres({ dir: scratch, log, port });

  assert.deepEqual(await client.request({ type: 'subscribe', taskId: unknown! }), { type: 'subscribed', taskId: unknown });
  const again = await TestClient.connect(wsUrl, { 'x-makima-api-key': key });
  assert.deepEqual(await again.request({ type: 'subscribeOutput', taskId: known! }), { type: 'outputSubscribed', taskId: known });
  await again.close();
  await client.close();
  await app.close();
  await sql.end({ timeout: 1 });
});

test('a database that accepts connections but never answers: UNAVAILABLE after the lookup timeout', async () => {
  const sockets = new Set<Socket>();
  const silent: Server = createServer((socket) => {
    sockets.add(socket);
  });
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  const sql = postgres(`postgres://nobody@127.0.0.1:${(silent.address() as { port: number }).port}/none`, { max: 1 });
  const app = Fastify();
  await app.register(meshSubscriptions, {
    sql,
    authenticate: async () => ({ ownerId: null, admin: true }),
    lookupTimeoutMs: 200,
    bus: 'memory',
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const client = await TestClient.connect(`ws://127.0.0.1:${(app.server.address() as { port: number }).port}/api/v1/mesh/tasks/subscribe`);
  const reply = await client.request({ type: 'subscribe', taskId: crypto.randomUUID() });
  assert.equal(reply.code, 'UNAVAILABLE');
  // The socket is still usable.
  assert.deepEqual(await client.request({ type: 'subscribeAll' }), { type: 'subscribedAll' });
  await client.close();
  await app.close();
  for (const socket of sockets) socket.destroy();
  silent.close();
  await sql.end({ timeout: 0 });
});

/**
 * A fresh embedded database, the example app on it with the PostgreSQL bus, and an admin client
 * following one task; `publish(version)` publishes an update of it, and version 1 has arrived.
 */
async function followOneTaskOnFreshDatabase(mesh: Partial<MeshSubscriptionsOptions>) {
  await database?.stop();
  database = await startEmbeddedPostgres({ dir: scratch, log });
  const sql = postgres(database.url, { max: 4, connect_timeout: 2, onnotice: () => {} });
  await migrate(sql);
  const app = await buildApp({ sql, logger: false, mesh: { bus: 'postgres', ...mesh } });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const wsUrl = `ws://127.0.0.1:${(app.server.address() as { port: number }).port}/api/v1/mesh/tasks/subscribe`;
  const key = await createApiKey(sql, { ownerId: null, admin: true });
  const [task] = await sql<{ id: string }[]>`INSERT INTO tasks (owner_id) VALUES (NULL) RETURNING id::text AS id`;
  const client = await TestClient.connect(wsUrl, { 'x-makima-api-key': key });
  await client.request({ type: 'subscribe', taskId: task!.id });
  const publish = (version: number) =>
    app.mesh.taskUpdates.publish({ taskId: task!.id, ownerId: null, version, status: 's', updatedFields: [], updatedBy: 't' });
  await publish(1);
  assert.equal((await client.next()).version, 1);
  return { sql, app, client, task: task!.id, publish };
}

test(
  'the PostgreSQL bus through a database restart: publishing fails while it is down, nothing published is lost',
  { timeout: 60_000 },
  async () => {
    const { sql, app, client, task, publish } = await followOneTaskOnFreshDatabase({ pollIntervalMs: 200 });
    const port = Number(new URL(database!.url).port);

    await database!.stop();
    await assert.rejects(publish(2), { name: 'MeshBusUnavailableError' });
    database = await startEmbeddedPostgres({ dir: scratch, log, port });

    // Published from another connection while this instance's LISTEN connection is still away:
    // its catch-up read after re-listening (or its poll) delivers them, in order.
    const other = postgres(database.url, { max: 1, onnotice: () => {} });
    for (let v = 3; v <= 5; v++) await other`SELECT mesh_publish_task_update(${task}::uuid, NULL, ${v}, 's', '{}', 't')`;
    await other.end();
    await publish(6);
    const versions = [];
    for (let i = 0; i < 4; i++) versions.push((await client.next()).version);
    assert.deepEqual(versions, [3, 4, 5, 6]);
    await client.close();
    await app.close();
    await sql.end({ timeout: 1 });
  },
);

test(
  'a LISTEN connection gone silent (its backend stopped, the socket still open) is replaced; what came meanwhile is delivered',
  { timeout: 60_000 },
  async () => {
    // Polling too rare to matter here: only a working LISTEN connection delivers within the test.
    const { sql, app, client, publish } = await followOneTaskOnFreshDatabase({ pollIntervalMs: 600_000, listenTimeoutMs: 500 });

    // The embedded server is ours: stopping its backend leaves the TCP connection open and mute,
    // as a half-dead network path would.
    const [listener] = await sql<{ pid: number }[]>`SELECT pid FROM pg_stat_activity WHERE query ILIKE 'listen%'`;
    process.kill(listener!.pid, 'SIGSTOP');
    stoppedBackend = listener!.pid;
    try {
      const restarted = once(app.mesh.events, 'listenerRestarted');
      await publish(2);
      await restarted;
      assert.equal((await client.next()).version, 2);
      await publish(3);
      assert.equal((await client.next()).version, 3);
      const [replacement] = await sql<
        { pid: number }[]
      >`SELECT pid FROM pg_stat_activity WHERE query ILIKE 'listen%' AND pid <> ${listener!.pid}`;
      assert.ok(replacement, 'a new LISTEN connection');
    } finally {
      process.kill(listener!.pid, 'SIGCONT');
      stoppedBackend = undefined;
    }
    await client.close();
    await app.close();
    await sql.end({ timeout: 1 });
  },
);
