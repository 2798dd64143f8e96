/**
 * Limits on what a client may ask of the server: frame rate, subscriptions, connections, Origin.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Writable } from 'node:stream';
import type { FastifyRequest } from 'fastify';
import pino from 'pino';
import { CloseCode, type MeshSubscriptionsOptions } from '../src/index.js';
import { apiKeyAuthenticator } from '../example/src/api-keys.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { startTestServer, type TestServer } from './helpers/server.js';
import { TestClient, refusal } from './helpers/ws-client.js';

let db: TestDatabase;
before(async () => {
  db = await createTestDatabase();
});
after(() => db.drop());

async function withServer(mesh: Partial<MeshSubscriptionsOptions>, body: (s: TestServer) => Promise<void>) {
  const server = await startTestServer({ db, mesh });
  try {
    await body(server);
  } finally {
    await server.close();
  }
}

describe('frames per connection', () => {
  test('over the token bucket: RATE_LIMITED, the frame ignored, the socket open', () =>
    withServer({ maxFramesPerSecond: 1, frameBurst: 5 }, async (server) => {
      const { key } = await server.owner();
      const client = await server.connect(key);
      for (let i = 0; i < 7; i++) client.send({ type: 'subscribeAll' });
      const replies = [];
      for (let i = 0; i < 7; i++) replies.push(await client.next());
      assert.deepEqual(
        replies.map((r) => r.code ?? r.type),
        ['subscribedAll', 'subscribedAll', 'subscribedAll', 'subscribedAll', 'subscribedAll', 'RATE_LIMITED', 'RATE_LIMITED'],
      );
      assert.equal(client.socket.readyState, client.socket.OPEN);
      await client.close();
    }));

  test('a client that keeps flooding is closed with 1008', () =>
    withServer({ maxFramesPerSecond: 1, frameBurst: 5, floodCloseAfterMs: 200 }, async (server) => {
      const { key } = await server.owner();
      const client = await server.connect(key);
      let open = true;
      void client.closed.then(() => (open = false));
      // The flood itself: one frame per loop turn until the server gives up on us (bounded).
      for (let sent = 0; open && sent < 1_000_000; sent++) {
        client.send({ type: 'subscribeAll' });
        await new Promise(setImmediate);
      }
      assert.equal((await client.closed).code, CloseCode.POLICY_VIOLATION);
    }));
});

describe('subscriptions per connection', () => {
  test('over the limit: TOO_MANY_SUBSCRIPTIONS and nothing added; re-subscribing what is held is fine', () =>
    withServer({ maxSubscriptionsPerConnection: 3 }, async (server) => {
      const { ownerId, key } = await server.owner();
      const [t1, t2] = [await server.task(ownerId), await server.task(ownerId)];
      const client = await server.connect(key);
      assert.equal((await client.request({ type: 'subscribeAll' })).type, 'subscribedAll');
      assert.equal((await client.request({ type: 'subscribe', taskId: t1 })).type, 'subscribed');
      assert.equal((await client.request({ type: 'subscribeOutput', taskId: t1 })).type, 'outputSubscribed');
      assert.equal((await client.request({ type: 'subscribe', taskId: t2 })).code, 'TOO_MANY_SUBSCRIPTIONS');
      assert.equal((await client.request({ type: 'subscribeOutput', taskId: t2 })).code, 'TOO_MANY_SUBSCRIPTIONS');
      assert.equal((await client.request({ type: 'subscribe', taskId: t1 })).type, 'subscribed');
      assert.equal((await client.request({ type: 'subscribeAll' })).type, 'subscribedAll');
      await client.request({ type: 'unsubscribe', taskId: t1 });
      assert.equal((await client.request({ type: 'subscribe', taskId: t2 })).type, 'subscribed');
      assert.deepEqual(server.app.mesh.stats(), { connections: 1, tasks: 1, outputs: 1, ownersAll: 1, adminsAll: 0 });
      await client.close();
    }));
});

describe('connections', () => {
  test('per principal: 429 over the limit, admitted again once one closes', () =>
    withServer({ maxConnectionsPerPrincipal: 2 }, async (server) => {
      const { key } = await server.owner();
      const other = await server.owner();
      const a = await server.connect(key);
      await server.connect(key);
      const third = await refusal(server.connect(key));
      assert.equal(third.status, 429);
      assert.equal(JSON.parse(third.body).code, 'TOO_MANY_CONNECTIONS');
      // Another principal is not affected.
      await server.connect(other.key);
      await a.close();
      // The server frees the place when it sees the TCP close; each refused attempt is one more turn.
      let admitted: TestClient | undefined;
      for (let attempt = 0; !admitted && attempt < 1000; attempt++) {
        admitted = await server.connect(key).catch(() => undefined);
      }
      assert.ok(admitted, 'a place freed by a closed socket was never given back');
    }));

  test('a socket the server closes gives its place back once it is closed, in total and per principal', () =>
    withServer({ maxConnections: 1, maxConnectionsPerPrincipal: 1, maxPayload: 1024 }, async (server) => {
      const { key } = await server.owner();
      const a = await server.connect(key);
      assert.equal((await refusal(server.connect(key))).status, 503, 'the one place is held');
      // Too large a frame: the server closes the socket (1009), and the client answers the close.
      a.socket.send(JSON.stringify({ type: 'subscribeAll', pad: 'x'.repeat(2048) }));
      assert.equal((await a.closed).code, CloseCode.MESSAGE_TOO_BIG);
      let admitted: TestClient | undefined;
      for (let attempt = 0; !admitted && attempt < 1000; attempt++) {
        admitted = await server.connect(key).catch(() => undefined);
      }
      assert.ok(admitted, 'the place of a socket the server closed was never given back');
      assert.deepEqual(await admitted.request({ type: 'subscribeAll' }), { type: 'subscribedAll' });
      assert.equal((await refusal(server.connect(key))).status, 503, 'and it is held again, once');
    }));

  test('plain GETs (426) on a kept-alive connection take no place', () =>
    withServer({ maxConnectionsPerPrincipal: 1 }, async (server) => {
      const { key } = await server.owner();
      for (let i = 0; i < 3; i++) assert.equal((await server.http('GET', '/api/v1/mesh/tasks/subscribe', key)).status, 426);
      const client = await server.connect(key);
      assert.deepEqual(await client.request({ type: 'subscribeAll' }), { type: 'subscribedAll' });
      assert.equal((await refusal(server.connect(key))).status, 429);
    }));

  test('in total: 503 with Retry-After over the limit', () =>
    withServer({ maxConnections: 2 }, async (server) => {
      for (let i = 0; i < 2; i++) await server.connect((await server.owner()).key);
      const refused = await refusal(server.connect((await server.owner()).key));
      assert.equal(refused.status, 503);
      assert.equal(JSON.parse(refused.body).code, 'SERVER_BUSY');
      assert.ok(Number(refused.headers['retry-after']) > 0);
    }));

  test('in total, under concurrent upgrades: places are taken before authentication, so exactly maxConnections get 101', async () => {
    const upgrades = 20;
    const max = 5;
    // authenticate holds every upgrade that reaches it until all 20 have either reached it or
    // been refused: on code that counts a place only after authenticate, all 20 would pass the limit.
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let waiting = 0;
    let refused = 0;
    const settle = () => {
      if (waiting + refused === upgrades) release();
    };
    const real = apiKeyAuthenticator(db.sql);
    // "websocket closed" log lines: the server let go of a socket (its place is back by then).
    let closedLines = 0;
    const closeWaiters: Array<{ count: number; resolve: () => void }> = [];
    const sink = new Writable({
      write(chunk, _encoding, done) {
        closedLines += chunk.toString().split('"msg":"websocket closed"').length - 1;
        for (const w of closeWaiters.filter((w) => closedLines >= w.count)) {
          closeWaiters.splice(closeWaiters.indexOf(w), 1);
          w.resolve();
        }
        done();
      },
    });
    const socketsClosed = (count: number) =>
      closedLines >= count ? Promise.resolve() : new Promise<void>((resolve) => closeWaiters.push({ count, resolve }));
    const server = await startTestServer({
      db,
      loggerInstance: pino({ level: 'info' }, sink),
      mesh: {
        maxConnections: max,
        authenticate: async (request: FastifyRequest) => {
          waiting++;
          settle();
          await gate;
          return real(request);
        },
      },
    });
    try {
      const { key } = await server.admin();
      const attempts = Array.from({ length: upgrades }, () =>
        TestClient.connect(server.wsUrl, { 'x-makima-api-key': key }).then(
          (client) => ({ client }),
          (error: { status?: number; body?: string; headers?: Record<string, unknown> }) => {
            refused++;
            settle();
            return { error };
          },
        ),
      );
      const results = await Promise.all(attempts);
      const admitted = results.flatMap((r) => ('client' in r ? [r.client] : []));
      const busy = results.flatMap((r) => ('error' in r ? [r.error] : []));
      assert.equal(admitted.length, max, `${admitted.length} upgrades were admitted under maxConnections: ${max}`);
      assert.equal(busy.length, upgrades - max);
      for (const error of busy) {
        assert.equal(error.status, 503);
        assert.equal(JSON.parse(error.body!).code, 'SERVER_BUSY');
        assert.ok(Number(error.headers!['retry-after']) > 0);
      }
      assert.equal(server.app.mesh.stats().connections, max);

      // All close: nothing held any more, and every place is free again — max more, and no more.
      await Promise.all(admitted.map((c) => c.close()));
      await socketsClosed(max);
      assert.deepEqual(server.app.mesh.stats(), { connections: 0, tasks: 0, outputs: 0, ownersAll: 0, adminsAll: 0 });
      const again = [];
      for (let i = 0; i < max; i++) again.push(await TestClient.connect(server.wsUrl, { 'x-makima-api-key': key }));
      const over = await refusal(TestClient.connect(server.wsUrl, { 'x-makima-api-key': key }));
      assert.equal(JSON.parse(over.body).code, 'SERVER_BUSY');
      await Promise.all(again.map((c) => c.close()));
      await socketsClosed(2 * max);
      assert.equal(server.app.mesh.stats().connections, 0);
    } finally {
      await server.close();
    }
  });

  test('per principal, under concurrent upgrades: exactly maxConnectionsPerPrincipal get 101, the rest 429', async () => {
    const upgrades = 10;
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let waiting = 0;
    const real = apiKeyAuthenticator(db.sql);
    const server = await startTestServer({
      db,
      mesh: {
        maxConnectionsPerPrincipal: 2,
        authenticate: async (request: FastifyRequest) => {
          if (++waiting === upgrades) release();
          await gate;
          return real(request);
        },
      },
    });
    try {
      const { key } = await server.owner();
      const results = await Promise.all(
        Array.from({ length: upgrades }, () =>
          TestClient.connect(server.wsUrl, { 'x-makima-api-key': key }).then(
            (client) => ({ client }),
            (error: { status: number }) => ({ error }),
          ),
        ),
      );
      const admitted = results.flatMap((r) => ('client' in r ? [r.client] : []));
      assert.equal(admitted.length, 2);
      assert.deepEqual(
        results.flatMap((r) => ('error' in r ? [r.error.status] : [])),
        Array(upgrades - 2).fill(429),
      );
      await Promise.all(admitted.map((c) => c.close()));
    } finally {
      await server.close();
    }
  });

  test('Origin allow-list: 403 for another browser Origin before any 101; none or an allowed one passes', () =>
    withServer({ allowedOrigins: ['https://app.example.com'] }, async (server) => {
      const { key } = await server.owner();
      const evil = await refusal(server.connect(key, { origin: 'https://evil.example' }));
      assert.equal(evil.status, 403);
      assert.equal(JSON.parse(evil.body).code, 'ORIGIN_NOT_ALLOWED');
      // 403 comes before authentication: no key needed to be refused, and none leaks through.
      assert.equal((await refusal(TestClient.connect(server.wsUrl, { origin: 'https://evil.example' }))).status, 403);
      await server.connect(key, { origin: 'https://app.example.com' });
      await server.connect(key);
    }));
});
