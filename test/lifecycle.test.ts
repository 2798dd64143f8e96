/**
 * Sockets over time: dead peers, revoked and changed credentials, shutdown of the plugin and of
 * the example server process.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { CloseCode } from '../src/index.js';
import { createApiKey, revokeApiKey } from '../example/src/api-keys.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { startServerProcess } from './helpers/process.js';
import { startTestServer } from './helpers/server.js';
import { TestClient, tcpOf } from './helpers/ws-client.js';

let db: TestDatabase;
before(async () => {
  db = await createTestDatabase();
});
after(() => db.drop());

test('a peer that stops answering pings is terminated and its subscriptions freed; a live one stays', async () => {
  const server = await startTestServer({ db, mesh: { pingIntervalMs: 100 } });
  const { key } = await server.owner();
  const live = await server.connect(key);
  const dead = new WebSocket(server.wsUrl, { headers: { 'x-makima-api-key': key }, autoPong: false });
  await once(dead, 'open');
  dead.send(JSON.stringify({ type: 'subscribeAll' }));
  await once(dead, 'message');
  const closed = once(dead, 'close');
  // The dead one is cut at the second ping round; the live one answers every ping it gets.
  for (let pings = 0; pings < 4; pings++) await once(live.socket, 'ping');
  const [code] = await closed;
  assert.equal(code, 1006);
  assert.equal(server.app.mesh.stats().connections, 1);
  assert.equal(server.app.mesh.stats().ownersAll, 0);
  assert.equal(live.socket.readyState, WebSocket.OPEN);
  await server.close();
});

for (const [how, mesh] of [
  ['reauthenticate(principal)', {}],
  ['authenticate(request) again, without reauthenticate', { reauthenticate: undefined }],
] as const) {
  test(`a revoked key: the socket is closed with 4401 at the next re-authentication, by ${how}`, async () => {
    const server = await startTestServer({ db, mesh: { reauthIntervalMs: 100, ...mesh } });
    const { ownerId, key } = await server.owner();
    const client = await server.connect(key);
    await client.request({ type: 'subscribe', taskId: await server.task(ownerId) });
    await revokeApiKey(db.sql, key);
    const { code } = await client.closed;
    assert.equal(code, CloseCode.UNAUTHORIZED);
    assert.equal(server.app.mesh.stats().tasks, 0);
    await server.close();
  });
}

test('a principal that changed loses the subscriptions it may no longer hold', async () => {
  const server = await startTestServer({ db, mesh: { reauthIntervalMs: 100 } });
  const alice = await server.owner();
  const bob = await server.owner();
  const aliceTask = await server.task(alice.ownerId);
  const bobTask = await server.task(bob.ownerId);
  const key = await createApiKey(db.sql, { ownerId: alice.ownerId, admin: false });
  const client = await server.connect(key);
  await client.request({ type: 'subscribe', taskId: aliceTask });
  await client.request({ type: 'subscribeOutput', taskId: aliceTask });
  await client.request({ type: 'subscribeAll' });
  // The key now belongs to bob.
  await db.sql`UPDATE api_keys SET owner_id = ${bob.ownerId} WHERE owner_id = ${alice.ownerId}`;
  const dropped = [await client.next(), await client.next()];
  assert.deepEqual(
    dropped.sort((a, b) => a.type.localeCompare(b.type)),
    [
      { type: 'outputUnsubscribed', taskId: aliceTask },
      { type: 'unsubscribed', taskId: aliceTask },
    ],
  );
  const publish = (taskId: string, ownerId: string, version: number) =>
    server.app.mesh.taskUpdates.publish({ taskId, ownerId, version, status: 's', updatedFields: [], updatedBy: 't' });
  await publish(aliceTask, alice.ownerId, 1);
  await publish(bobTask, bob.ownerId, 2);
  // subscribeAll now follows bob's tasks; alice's update, had it come, would be first.
  const next = await client.next();
  assert.equal(next.taskId, bobTask);
  await server.close();
});

test('app.close() finishes within the shutdown timeout even when a client never completes the close', async () => {
  const server = await startTestServer({ db, mesh: { shutdownTimeoutMs: 200 } });
  const { key } = await server.owner();
  const polite = await server.connect(key);
  const stuck = await server.connect(key);
  tcpOf(stuck).pause();
  await server.app.close();
  assert.equal((await polite.closed).code, CloseCode.GOING_AWAY);
  tcpOf(stuck).resume();
  await stuck.closed;
  assert.equal(server.app.mesh.stats().connections, 0);
  await server.close();
});

test('the example server shuts down on SIGTERM: sockets get 1001, the process exits 0', async () => {
  const { child, wsUrl, output } = await startServerProcess(db.url);
  const key = await createApiKey(db.sql, { ownerId: null, admin: true });
  const client = await TestClient.connect(wsUrl, { 'x-makima-api-key': key });
  await client.request({ type: 'subscribeAll' });
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  assert.equal((await client.closed).code, CloseCode.GOING_AWAY);
  const [code] = await exited;
  assert.equal(code, 0);
  assert.match(output(), /"signal":"SIGTERM".*shutting down/);
});
