/**
 * The plugin mounted into a host API as hosts write them: the host's own @fastify/websocket (or
 * none, and the plugin registers its own), @fastify/rate-limit, and a global `onRequest` guard that
 * answers in the host's own shape. The plugin's routes pass every host answer through unchanged
 * (never a 500 for a body that is not the plugin's `{code, message}`), and `app.close()` gives the
 * plugin's sockets 1001 "server shutting down" in both set-ups.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { after, before, test } from 'node:test';
import rateLimit from '@fastify/rate-limit';
import fastifyWebsocket from '@fastify/websocket';
import Fastify, { type FastifyInstance } from 'fastify';
import WebSocket from 'ws';
import meshSubscriptions, {
  CloseCode,
  selectProtocol,
  TICKET_PROTOCOL_PREFIX,
  type MeshSubscriptionsOptions,
  type Principal,
} from '../src/index.js';
import { createMeshClient } from '../src/client/index.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { refusal, TestClient } from './helpers/ws-client.js';
import { statusWhere } from './helpers/client-status.js';

let db: TestDatabase;
before(async () => {
  db = await createTestDatabase();
});

const TOKEN = 'let-me-in';
const admin: Principal = { ownerId: null, admin: true, id: 'host-admin' };
const GUARD_BODY = { error: 'Unauthorized', message: 'the host wants its token' };

interface HostOptions {
  /** The host registers @fastify/websocket itself, before the plugin (as the README asks). */
  ownWebsocket: boolean;
  /** @fastify/rate-limit, this many requests per client per minute. */
  rateLimit?: number;
  /** A global onRequest guard: no `x-host-token` (and no ticket offered), 401 in the host's shape. */
  guard?: boolean;
  mesh?: Partial<MeshSubscriptionsOptions>;
}

interface Host {
  app: FastifyInstance;
  base: string;
  ws: string;
}

const hosts: FastifyInstance[] = [];
// The hosts first: their buses use the database's client.
after(async () => {
  await Promise.all(hosts.map((app) => app.close()));
  await db.drop();
});

async function startHost(options: HostOptions): Promise<Host> {
  const app = Fastify();
  hosts.push(app);
  if (options.ownWebsocket) await app.register(fastifyWebsocket, { options: { handleProtocols: selectProtocol } });
  if (options.rateLimit !== undefined) await app.register(rateLimit, { max: options.rateLimit, timeWindow: '1 minute' });
  if (options.guard) {
    app.addHook('onRequest', async (request, reply) => {
      // Ticketed upgrades carry no header of the host's (a browser cannot set one): the plugin judges them.
      const ticketed = String(request.headers['sec-websocket-protocol'] ?? '').includes(TICKET_PROTOCOL_PREFIX);
      if (request.headers['x-host-token'] !== TOKEN && !ticketed) return reply.code(401).send(GUARD_BODY);
    });
  }
  await app.register(meshSubscriptions, {
    sql: db.sql,
    authenticate: async (request) => (request.headers['x-host-token'] === TOKEN ? admin : null),
    reauthenticate: async (principal) => principal,
    ...options.mesh,
  });
  if (options.ownWebsocket) {
    // The host's own WebSocket route, beside the plugin's.
    app.get('/echo', { websocket: true }, (socket) => {
      socket.on('message', (data) => socket.send(data));
    });
  }
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as { port: number };
  return { app, base: `http://127.0.0.1:${port}`, ws: `ws://127.0.0.1:${port}/api/v1/mesh/tasks/subscribe` };
}

const bodyOf = (text: string): unknown => JSON.parse(text);

for (const ownWebsocket of [true, false]) {
  const setUp = ownWebsocket ? 'the host registers @fastify/websocket' : 'the plugin registers @fastify/websocket';

  test(`${setUp}: @fastify/rate-limit's 429 passes through in its own body, on upgrades, plain GETs and tickets`, async () => {
    const host = await startHost({ ownWebsocket, rateLimit: 2 });
    // Two upgrades within the limit open.
    const open = [
      await TestClient.connect(host.ws, { 'x-host-token': TOKEN }),
      await TestClient.connect(host.ws, { 'x-host-token': TOKEN }),
    ];
    const limited = {
      status: 429,
      body: { statusCode: 429, error: 'Too Many Requests', message: 'Rate limit exceeded, retry in 1 minute' },
    };
    for (let i = 0; i < 5; i++) {
      const refused = await refusal(TestClient.connect(host.ws, { 'x-host-token': TOKEN }));
      assert.deepEqual({ status: refused.status, body: bodyOf(refused.body) }, limited);
      assert.ok(refused.headers['retry-after'], 'rate-limit sets its own Retry-After');
    }
    const plain = await fetch(host.ws.replace(/^ws/, 'http'), { headers: { 'x-host-token': TOKEN } });
    assert.deepEqual({ status: plain.status, body: await plain.json() }, limited);
    const ticket = await fetch(`${host.base}/api/v1/mesh/tickets`, { method: 'POST', headers: { 'x-host-token': TOKEN } });
    assert.deepEqual({ status: ticket.status, body: await ticket.json() }, limited);
    await Promise.all(open.map((c) => c.close()));
  });

  test(`${setUp}: a global onRequest guard's 401 passes through unchanged; the plugin's own refusals keep {code, message}`, async () => {
    const host = await startHost({ ownWebsocket, guard: true });
    const refused = await refusal(TestClient.connect(host.ws));
    assert.deepEqual({ status: refused.status, body: bodyOf(refused.body) }, { status: 401, body: GUARD_BODY });
    const plain = await fetch(host.ws.replace(/^ws/, 'http'));
    assert.deepEqual({ status: plain.status, body: await plain.json() }, { status: 401, body: GUARD_BODY });
    const ticket = await fetch(`${host.base}/api/v1/mesh/tickets`, { method: 'POST' });
    assert.deepEqual({ status: ticket.status, body: await ticket.json() }, { status: 401, body: GUARD_BODY });
    // The refused upgrade's TCP socket is ended by the server (nothing else would end it).
    const raw = connect(Number(new URL(host.base).port), '127.0.0.1');
    raw.write(
      'GET /api/v1/mesh/tasks/subscribe HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
        'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
    );
    let answer = '';
    raw.on('data', (chunk: Buffer) => (answer += chunk.toString()));
    await once(raw, 'end');
    assert.match(answer, /^HTTP\/1\.1 401 /);
    raw.destroy();

    // Past the guard, the plugin answers in its own shape, as documented.
    const spent = await refusal(
      TestClient.connect(host.ws, { 'x-host-token': TOKEN }, ['mesh.v1', `${TICKET_PROTOCOL_PREFIX}not-a-ticket`]),
    );
    assert.equal(spent.status, 401);
    assert.deepEqual(Object.keys(bodyOf(spent.body) as object).sort(), ['code', 'message']);
    const upgradeRequired = await fetch(host.ws.replace(/^ws/, 'http'), { headers: { 'x-host-token': TOKEN } });
    assert.equal(upgradeRequired.status, 426);
    assert.equal(((await upgradeRequired.json()) as { code: string }).code, 'UPGRADE_REQUIRED');
    // And a ticketed upgrade, let through by the guard, opens.
    const minted = await fetch(`${host.base}/api/v1/mesh/tickets`, { method: 'POST', headers: { 'x-host-token': TOKEN } });
    const { protocols } = (await minted.json()) as { protocols: string[] };
    const client = await TestClient.connect(host.ws, {}, protocols);
    assert.deepEqual(await client.request({ type: 'subscribeAll' }), { type: 'subscribedAll' });
    await client.close();
  });

  test(`${setUp}: app.close() gives the plugin's sockets 1001 "server shutting down"`, async () => {
    const host = await startHost({ ownWebsocket });
    const client = await TestClient.connect(host.ws, { 'x-host-token': TOKEN });
    assert.deepEqual(await client.request({ type: 'subscribeAll' }), { type: 'subscribedAll' });
    // The host's own socket, when it has a WebSocket route of its own, is still closed by app.close().
    const echo = ownWebsocket ? new WebSocket(host.base.replace(/^http/, 'ws') + '/echo') : undefined;
    if (echo) await once(echo, 'open');
    const echoClosed = echo ? once(echo, 'close') : undefined;
    await host.app.close();
    assert.deepEqual(await client.closed, { code: CloseCode.GOING_AWAY, reason: 'server shutting down' });
    if (echoClosed) await echoClosed;
  });
}

test('the package client behind a guard and a rate limit: it signs in with a ticket and says why when it is limited', async () => {
  const host = await startHost({ ownWebsocket: true, guard: true, rateLimit: 2 });
  const mesh = createMeshClient({ url: host.base, apiKey: TOKEN, keyHeader: 'x-host-token', WebSocket, initialDelayMs: 10_000 });
  // The ticket request and the upgrade: the two requests the limit allows.
  await statusWhere(mesh, (s) => s.state === 'open');
  await mesh.subscribeAll().ready;
  const second = createMeshClient({ url: host.base, apiKey: TOKEN, keyHeader: 'x-host-token', WebSocket, initialDelayMs: 10_000 });
  const limited = await statusWhere(second, (s) => s.state !== 'connecting');
  second.close();
  assert.deepEqual(
    { ...limited, inMs: 0 },
    { state: 'reconnecting', attempt: 1, inMs: 0, status: 429, message: 'ticket request: HTTP 429 Rate limit exceeded, retry in 1 minute' },
  );
  mesh.close();
});

test("OpenAPI: the plugin's routes name the host's credential schemes (Swagger UI's \"Try it out\" sends the key)", async () => {
  const document = JSON.parse(await readFile(new URL('../openapi/openapi.json', import.meta.url), 'utf8')) as {
    paths: Record<string, Record<string, { security?: unknown }>>;
    components: { securitySchemes: Record<string, unknown> };
  };
  const expected = [{ apiKey: [] }, { bearer: [] }];
  assert.deepEqual(Object.keys(document.components.securitySchemes).sort(), ['apiKey', 'bearer']);
  assert.deepEqual(document.paths['/api/v1/mesh/tasks/subscribe']!.get!.security, expected);
  assert.deepEqual(document.paths['/api/v1/mesh/tickets']!.post!.security, expected);
});
