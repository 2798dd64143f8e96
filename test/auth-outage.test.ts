/**
 * An outage of the credentials store is not a verdict on the credentials: while the host's
 * `authenticate` (or `reauthenticate`, at ticket redemption) throws, or the ticket store cannot be
 * read, the upgrade and the tickets route answer 503 `UNAVAILABLE` with `Retry-After`, never 401;
 * the client keeps retrying through it and connects once it is over, and still stops on a 401.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { FastifyRequest } from 'fastify';
import WebSocket from 'ws';
import { createMeshClient, type ConnectionStatus, type MeshClient } from '../src/client/index.js';
import type { Principal } from '../src/index.js';
import { apiKeyAuthenticator, apiKeyReauthenticator, revokeApiKey } from '../example/src/api-keys.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { startTestServer, type TestServer } from './helpers/server.js';
import { TestClient, refusal } from './helpers/ws-client.js';

let db: TestDatabase;
let server: TestServer;
/** While set, the host's checks throw, as they would with its database down. */
const down = { authenticate: false, reauthenticate: false };
before(async () => {
  db = await createTestDatabase();
  const authenticate = apiKeyAuthenticator(db.sql);
  const reauthenticate = apiKeyReauthenticator(db.sql);
  server = await startTestServer({
    db,
    mesh: {
      authenticate: async (request: FastifyRequest) => {
        if (down.authenticate) throw new Error('connect ECONNREFUSED (the auth database is down)');
        return authenticate(request);
      },
      reauthenticate: async (principal: Principal) => {
        if (down.reauthenticate) throw new Error('connect ECONNREFUSED (the auth database is down)');
        return reauthenticate(principal);
      },
    },
  });
});
const clients: MeshClient[] = [];
after(async () => {
  clients.forEach((c) => c.close());
  down.authenticate = down.reauthenticate = false;
  await server.close();
  await db.drop();
});

async function mint(key: string): Promise<{ status: number; retryAfter: string | null; body: any }> {
  const res = await fetch(`${server.baseUrl}/api/v1/mesh/tickets`, { method: 'POST', headers: { 'x-makima-api-key': key } });
  return { status: res.status, retryAfter: res.headers.get('retry-after'), body: await res.json() };
}

const UNAVAILABLE = { code: 'UNAVAILABLE', message: 'credentials could not be checked right now; retry later' };

function authFailures(): Promise<number> {
  return server.app.mesh.metrics
    .getSingleMetric('mesh_auth_failures_total')!
    .get()
    .then((m) => m.values.reduce((sum, v) => sum + v.value, 0));
}

test('authenticate throws: the upgrade and the tickets route answer 503 UNAVAILABLE with Retry-After, not 401', async () => {
  const { key } = await server.owner();
  const failuresBefore = await authFailures();
  down.authenticate = true;
  try {
    const upgrade = await refusal(server.connect(key));
    assert.equal(upgrade.status, 503);
    assert.deepEqual(JSON.parse(upgrade.body), UNAVAILABLE);
    assert.ok(Number(upgrade.headers['retry-after']) > 0, 'the upgrade says when to retry');
    const ticket = await mint(key);
    assert.equal(ticket.status, 503);
    assert.deepEqual(ticket.body, UNAVAILABLE);
    assert.ok(Number(ticket.retryAfter) > 0, 'the tickets route says when to retry');
  } finally {
    down.authenticate = false;
  }
  // An outage is not a refusal of credentials: the auth-failure counter does not move.
  assert.equal(await authFailures(), failuresBefore);
  // Over: the same key works again.
  const client = await server.connect(key);
  assert.deepEqual(await client.request({ type: 'subscribeAll' }), { type: 'subscribedAll' });
  await client.close();
  assert.equal((await mint(key)).status, 201);
});

test('redeeming a ticket while reauthenticate throws → 503 UNAVAILABLE with Retry-After', async () => {
  const { key } = await server.owner();
  const first = await mint(key);
  assert.equal(first.status, 201);
  down.reauthenticate = true;
  try {
    const refused = await refusal(TestClient.connect(server.wsUrl, {}, first.body.protocols));
    assert.equal(refused.status, 503);
    assert.deepEqual(JSON.parse(refused.body), UNAVAILABLE);
    assert.ok(Number(refused.headers['retry-after']) > 0);
  } finally {
    down.reauthenticate = false;
  }
});

test('the ticket store fails (its table out of reach) → 503 UNAVAILABLE on redeem and on mint; the ticket is not spent', async () => {
  const { key } = await server.owner();
  const second = await mint(key);
  assert.equal(second.status, 201);
  await db.sql`ALTER TABLE mesh_ws_tickets RENAME TO mesh_ws_tickets_away`;
  try {
    const refused = await refusal(TestClient.connect(server.wsUrl, {}, second.body.protocols));
    assert.equal(refused.status, 503);
    assert.deepEqual(JSON.parse(refused.body), UNAVAILABLE);
    assert.ok(Number(refused.headers['retry-after']) > 0);
    const minted = await mint(key);
    assert.equal(minted.status, 503);
    assert.equal(minted.body.code, 'UNAVAILABLE');
    assert.ok(Number(minted.retryAfter) > 0);
  } finally {
    await db.sql`ALTER TABLE mesh_ws_tickets_away RENAME TO mesh_ws_tickets`;
  }
  // The store could not be read, so the ticket was not spent: it opens a socket now.
  const client = await TestClient.connect(server.wsUrl, {}, second.body.protocols);
  assert.deepEqual(await client.request({ type: 'subscribeAll' }), { type: 'subscribedAll' });
  await client.close();
});

/**
 * Resolves with the first status `accept` takes; rejects if the client stops for good first, so
 * that a client that gave up fails the test instead of hanging it.
 */
function statusWhere(c: MeshClient, accept: (s: ConnectionStatus) => boolean): Promise<ConnectionStatus> {
  if (accept(c.status)) return Promise.resolve(c.status);
  return new Promise((resolve, reject) => {
    const stop = c.on('status', (s) => {
      if (accept(s)) {
        stop();
        resolve(s);
      } else if (s.state === 'closed') {
        stop();
        reject(new Error(`the client stopped: ${JSON.stringify(s)}`));
      }
    });
  });
}

test('the client retries through an outage at the ticket request and at the upgrade, then connects and receives events', async () => {
  const { ownerId, key } = await server.owner();
  const task = await server.task(ownerId);
  down.authenticate = true;
  const c = createMeshClient({ url: server.baseUrl, apiKey: key, WebSocket, initialDelayMs: 10, maxDelayMs: 50 });
  clients.push(c);
  let deliver!: (version: number) => void;
  const received = new Promise<number>((resolve) => (deliver = resolve));
  const subscription = c.subscribe(task, (e) => deliver(e.version));
  try {
    // The ticket request is answered 503: retried, and the status says why.
    const atTicket = await statusWhere(c, (s) => s.state === 'reconnecting' && s.status === 503 && /ticket/.test(s.message ?? ''));
    assert.equal(atTicket.state, 'reconnecting');
    assert.match(atTicket.state === 'reconnecting' ? atTicket.message! : '', /HTTP 503 UNAVAILABLE/);
    // Retried again, still no give-up.
    await statusWhere(c, (s) => s.state === 'reconnecting' && s.status === 503 && s.attempt >= 2);
    // Now the ticket is minted but its redemption cannot be checked: the upgrade is answered 503.
    down.reauthenticate = true;
    down.authenticate = false;
    const atUpgrade = await statusWhere(c, (s) => s.state === 'reconnecting' && s.status === 503 && /upgrade/.test(s.message ?? ''));
    assert.ok(atUpgrade.state === 'reconnecting' && atUpgrade.code === 1006, JSON.stringify(atUpgrade));
  } finally {
    down.authenticate = down.reauthenticate = false;
  }
  await statusWhere(c, (s) => s.state === 'open');
  await subscription.ready; // acked by the server, so the event below is not published before it
  await server.app.mesh.taskUpdates.publish({
    taskId: task,
    ownerId,
    version: 7,
    status: 'running',
    updatedFields: ['status'],
    updatedBy: 't',
  });
  assert.equal(await received, 7);
  c.close();
});

test('a 401 still stops the client: at the ticket request, and at the upgrade', async () => {
  const { key } = await server.owner();
  await revokeApiKey(db.sql, key);
  const revoked = createMeshClient({ url: server.baseUrl, apiKey: key, WebSocket, initialDelayMs: 10, maxDelayMs: 50 });
  clients.push(revoked);
  const seen: string[] = [];
  revoked.on('status', (s) => seen.push(s.state));
  assert.deepEqual(await statusWhere(revoked, (s) => s.state === 'closed'), {
    state: 'closed',
    reason: 'unauthorized',
    status: 401,
    message: 'ticket request: HTTP 401 UNAUTHORIZED',
  });
  assert.ok(!seen.includes('reconnecting'), seen.join(' → '));

  // A ticket the server refuses at the upgrade (here: made up): `ws` reports the 401, the client stops.
  const bogus = createMeshClient({
    url: server.baseUrl,
    protocols: async () => ['mesh.v1', `mesh.ticket.${'A'.repeat(43)}`],
    WebSocket,
    initialDelayMs: 10,
    maxDelayMs: 50,
  });
  clients.push(bogus);
  assert.deepEqual(await statusWhere(bogus, (s) => s.state === 'closed'), {
    state: 'closed',
    reason: 'unauthorized',
    status: 401,
    code: 1006,
    message: 'upgrade refused: HTTP 401',
  });
});
