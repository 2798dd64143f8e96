/**
 * Browser sign-in with single-use tickets: minted by an authenticated POST, offered as a
 * WebSocket subprotocol, good once, on any instance, never logged.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, before, test } from 'node:test';
import Fastify from 'fastify';
import pino from 'pino';
import meshSubscriptions, { MeshOptionsError } from '../src/index.js';
import { hashKey, revokeApiKey } from '../example/src/api-keys.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { startTestServer, type TestServer } from './helpers/server.js';
import { TestClient } from './helpers/ws-client.js';

let db: TestDatabase;
let a: TestServer;
let b: TestServer;
const logged: string[] = [];
before(async () => {
  db = await createTestDatabase();
  const sink = new Writable({
    write(chunk, _encoding, done) {
      logged.push(chunk.toString());
      done();
    },
  });
  a = await startTestServer({ db, loggerInstance: pino({ level: 'trace' }, sink) });
  b = await startTestServer({ db });
});
after(async () => {
  await a.close();
  await b.close();
  await db.drop();
});

type Minted = { ticket: string; expiresAt: string; protocols: string[] };

async function mint(server: TestServer, key: string | undefined): Promise<{ status: number; body: Minted }> {
  return server.http('POST', '/api/v1/mesh/tickets', key);
}

const refusal = (promise: Promise<unknown>) =>
  promise.then(
    () => assert.fail('the upgrade should have been refused'),
    (error: { status: number; body: string }) => ({ status: error.status, body: JSON.parse(error.body) }),
  );

test('a ticket minted with a key opens one socket as that key’s principal, on another instance too; mesh.v1 is selected', async () => {
  const { ownerId, key } = await a.owner();
  const mine = await a.task(ownerId);
  const theirs = await a.task(null);
  const { status, body } = await mint(a, key);
  assert.equal(status, 201);
  assert.deepEqual(body.protocols, ['mesh.v1', `mesh.ticket.${body.ticket}`]);
  assert.ok(Date.parse(body.expiresAt) > Date.now());
  const client = await TestClient.connect(b.wsUrl, {}, body.protocols);
  assert.equal(client.socket.protocol, 'mesh.v1');
  assert.deepEqual(await client.request({ type: 'subscribe', taskId: mine }), { type: 'subscribed', taskId: mine });
  assert.equal((await client.request({ type: 'subscribe', taskId: theirs })).code, 'NOT_FOUND');
  await client.close();
  // Once only, wherever it is presented again.
  for (const server of [a, b]) {
    assert.deepEqual(await refusal(TestClient.connect(server.wsUrl, {}, body.protocols)), {
      status: 401,
      body: { code: 'UNAUTHORIZED', message: 'missing or invalid credentials' },
    });
  }
});

test('no ticket without credentials; a made-up, malformed or expired ticket is refused with 401', async () => {
  assert.equal((await mint(a, undefined)).status, 401);
  assert.equal((await mint(a, 'mk_not-a-key')).status, 401);
  for (const ticket of ['A'.repeat(43), 'short', `${'A'.repeat(42)}*`, '']) {
    assert.equal((await refusal(TestClient.connect(a.wsUrl, {}, ['mesh.v1', `mesh.ticket.${ticket}`]))).status, 401);
  }
  const short = await startTestServer({ db, mesh: { ticketTtlMs: 1 } });
  const { key } = await short.owner();
  const { body } = await mint(short, key);
  await db.sql`SELECT pg_sleep(0.01)`; // past its one millisecond, by the database's clock
  assert.equal((await refusal(TestClient.connect(short.wsUrl, {}, body.protocols))).status, 401);
  await short.close();
});

test('a ticket minted before its key was revoked does not open a socket: 401, counted as an auth failure', async () => {
  const { key } = await a.owner();
  const { status, body } = await mint(a, key);
  assert.equal(status, 201);
  await revokeApiKey(db.sql, key);
  const failures = async () =>
    (await b.app.mesh.metrics.getSingleMetric('mesh_auth_failures_total')!.get()).values.find((v) => v.labels.stage === 'ticket')!.value;
  const before = await failures();
  assert.deepEqual(await refusal(TestClient.connect(b.wsUrl, {}, body.protocols)), {
    status: 401,
    body: { code: 'UNAUTHORIZED', message: 'missing or invalid credentials' },
  });
  assert.equal(await failures(), before + 1);
});

test('a ticket whose key changed owner after minting opens the socket as the new principal', async () => {
  const { ownerId, key } = await a.owner();
  const other = await a.owner();
  const mine = await a.task(ownerId);
  const theirs = await a.task(other.ownerId);
  const { body } = await mint(a, key);
  await db.sql`UPDATE api_keys SET owner_id = ${other.ownerId} WHERE key_hash = ${hashKey(key)}`;
  const client = await TestClient.connect(a.wsUrl, {}, body.protocols);
  assert.deepEqual(await client.request({ type: 'subscribe', taskId: theirs }), { type: 'subscribed', taskId: theirs });
  assert.equal((await client.request({ type: 'subscribe', taskId: mine })).code, 'NOT_FOUND');
  await client.close();
});

test('a plain GET offering a ticket does not spend it', async () => {
  const { key } = await a.owner();
  const { body } = await mint(a, key);
  const res = await fetch(`${a.baseUrl}/api/v1/mesh/tasks/subscribe`, { headers: { 'sec-websocket-protocol': body.protocols.join(', ') } });
  assert.equal(res.status, 401);
  const client = await TestClient.connect(a.wsUrl, {}, body.protocols);
  await client.close();
});

test('neither a key nor a ticket reaches the logs', async () => {
  const { key } = await a.owner();
  const { body } = await mint(a, key);
  const client = await TestClient.connect(a.wsUrl, {}, body.protocols);
  await client.close();
  const text = logged.join('');
  assert.ok(text.includes('/api/v1/mesh/tickets'), 'the mint request was logged');
  assert.ok(!text.includes(body.ticket), 'the ticket is not in the logs');
  assert.ok(!text.includes(key), 'the key is not in the logs');
});

test('tickets without reauthenticate are refused at registration; the memory bus keeps tickets in memory', async () => {
  const authenticate = async () => ({ ownerId: null, admin: true });
  const resolveOwners = async () => new Map();
  await assert.rejects(
    async () => {
      const app = Fastify();
      await app.register(meshSubscriptions, { authenticate, resolveOwners, tickets: true });
      await app.ready();
    },
    (error: Error) => error instanceof MeshOptionsError && /reauthenticate/.test(error.message),
  );
  const app = Fastify();
  await app.register(meshSubscriptions, { authenticate, resolveOwners, reauthenticate: async (p) => p });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const base = `127.0.0.1:${(app.server.address() as { port: number }).port}`;
  const minted = (await (await fetch(`http://${base}/api/v1/mesh/tickets`, { method: 'POST' })).json()) as Minted;
  const client = await TestClient.connect(`ws://${base}/api/v1/mesh/tasks/subscribe`, {}, minted.protocols);
  assert.deepEqual(await client.request({ type: 'subscribeAll' }), { type: 'subscribedAll' });
  await client.close();
  assert.equal((await refusal(TestClient.connect(`ws://${base}/api/v1/mesh/tasks/subscribe`, {}, minted.protocols))).status, 401);
  await app.close();
});
