/**
 * Operations: the Prometheus metrics after a scripted session (names and values), the host's own
 * registry, /readyz flipping before the server goes away, and one log line per socket opened and
 * closed, without secrets.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { Writable } from 'node:stream';
import { after, before, test } from 'node:test';
import Fastify from 'fastify';
import pino from 'pino';
import { Registry } from 'prom-client';
import meshSubscriptions from '../src/index.js';
import { revokeApiKey } from '../example/src/api-keys.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { deliveries } from './helpers/delivered.js';
import { startServerProcess } from './helpers/process.js';
import { startTestServer, type TestServer } from './helpers/server.js';
import { TestClient } from './helpers/ws-client.js';

let db: TestDatabase;
let server: TestServer;
const lines: Record<string, any>[] = [];
before(async () => {
  db = await createTestDatabase();
  const sink = new Writable({
    write(chunk, _encoding, done) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(line));
      done();
    },
  });
  server = await startTestServer({ db, loggerInstance: pino({ level: 'info' }, sink), mesh: { reauthIntervalMs: 100 } });
});
after(async () => {
  await server.close();
  await db.drop();
});

/** The value of one sample of the exposition text, or undefined. */
async function scrape(): Promise<(sample: string) => number | undefined> {
  const res = await fetch(`${server.baseUrl}/metrics`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain/);
  const text = await res.text();
  assert.doesNotMatch(text, /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/, 'no task or owner in a label');
  const values = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || !line) continue;
    const at = line.lastIndexOf(' ');
    values.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return (sample) => values.get(sample);
}

test('metrics after a scripted session: connections, subscriptions, frames, errors, closes, latency, auth failures', async () => {
  const { ownerId, key } = await server.owner();
  const mine = await server.task(ownerId);
  const theirs = await server.task(null);
  await assert.rejects(server.connect('mk_wrong'), { status: 401 });
  const client = await server.connect(key);
  await client.request({ type: 'subscribeAll' });
  await client.request({ type: 'subscribe', taskId: mine });
  await client.request({ type: 'subscribeOutput', taskId: mine });
  assert.equal((await client.request({ type: 'subscribe', taskId: theirs })).code, 'NOT_FOUND');
  assert.equal((await client.request('not json')).code, 'PARSE_ERROR');
  const delivered = deliveries(server.app);
  for (const version of [1, 2]) {
    await delivered(
      await server.app.mesh.taskUpdates.publish({ taskId: mine, ownerId, version, status: 's', updatedFields: [], updatedBy: 't' }),
    );
  }
  await delivered(
    await server.app.mesh.taskOutput.publish({ taskId: mine, ownerId, messageType: 'assistant', content: 'hi', isPartial: false }),
  );
  for (let i = 0; i < 3; i++) await client.next();

  let m = await scrape();
  assert.equal(m('mesh_connections'), 1);
  assert.equal(m('mesh_subscriptions{kind="task"}'), 1);
  assert.equal(m('mesh_subscriptions{kind="all"}'), 1);
  assert.equal(m('mesh_subscriptions{kind="output"}'), 1);
  assert.equal(m('mesh_frames_received_total{type="subscribe"}'), 2);
  assert.equal(m('mesh_frames_received_total{type="subscribeAll"}'), 1);
  assert.equal(m('mesh_frames_received_total{type="invalid"}'), 1);
  assert.equal(m('mesh_frames_sent_total{type="ack"}'), 3);
  assert.equal(m('mesh_frames_sent_total{type="error"}'), 2);
  assert.equal(m('mesh_frames_sent_total{type="taskUpdated"}'), 2, 'one frame per event, though two subscriptions cover it');
  assert.equal(m('mesh_frames_sent_total{type="taskOutput"}'), 1);
  assert.equal(m('mesh_errors_total{code="NOT_FOUND"}'), 1);
  assert.equal(m('mesh_errors_total{code="PARSE_ERROR"}'), 1);
  assert.equal(m('mesh_auth_failures_total{stage="upgrade"}'), 1);
  assert.equal(m('mesh_publish_to_write_seconds_count'), 3);
  assert.ok(m('mesh_sent_bytes_total')! > 200);
  assert.equal(m('mesh_slow_consumer_events_total{kind="disconnected"}'), 0);
  assert.equal(m('mesh_bus_listener_restarts_total'), 0);
  assert.ok(m('mesh_bus_lag_seconds')! >= 0);
  assert.ok(m('process_cpu_user_seconds_total')! > 0, 'the process metrics are there too');

  // Revoked: the next re-authentication closes the socket with 4401.
  await revokeApiKey(db.sql, key);
  assert.equal((await client.closed).code, 4401);
  m = await scrape();
  assert.equal(m('mesh_closes_total{code="4401"}'), 1);
  assert.equal(m('mesh_auth_failures_total{stage="reauthenticate"}'), 1);
  assert.equal(m('mesh_connections'), 0);
  assert.equal(m('mesh_subscriptions{kind="task"}'), 0);
});

test('bus metrics: a row no wake-up announced is a catch-up; a dropped LISTEN connection is a listener restart', async () => {
  const before = await scrape();
  const taskId = await server.task(null);
  const arrived = new Promise<void>((resolve) => {
    const stop = server.app.mesh.taskUpdates.subscribe((e) => {
      if (e.taskId !== taskId) return;
      stop();
      resolve();
    });
  });
  // As the SQL functions write it, minus the NOTIFY: only the periodic read finds it.
  await db.sql`
    INSERT INTO mesh_event_log (kind, task_id, owner_id, owner_given, payload)
    VALUES ('update', ${taskId}::uuid, NULL, true, ${db.sql.json({ version: 1, status: 's', updatedFields: [], updatedBy: 'sql' })})`;
  await arrived;
  let m = await scrape();
  assert.equal(m('mesh_bus_catch_ups_total'), before('mesh_bus_catch_ups_total')! + 1);
  assert.ok(m('mesh_bus_lag_seconds')! >= 0);

  const restarted = once(server.app.mesh.events, 'listenerRestarted');
  await db.sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'listen%'`;
  await restarted;
  m = await scrape();
  assert.equal(m('mesh_bus_listener_restarts_total'), before('mesh_bus_listener_restarts_total')! + 1);
});

test('a host with its own registry gets the plugin’s metrics in it', async () => {
  const registry = new Registry();
  const app = Fastify();
  await app.register(meshSubscriptions, {
    authenticate: async () => null,
    resolveOwners: async () => new Map(),
    metricsRegistry: registry,
  });
  await app.ready();
  assert.equal(app.mesh.metrics, registry);
  assert.match(await registry.metrics(), /^# HELP mesh_connections /m);
  await app.close();
  // The host's registry outlives the app: a new one registers into it again.
  const again = Fastify();
  await again.register(meshSubscriptions, {
    authenticate: async () => null,
    resolveOwners: async () => new Map(),
    metricsRegistry: registry,
  });
  await again.ready();
  await again.close();
  assert.doesNotMatch(await registry.metrics(), /mesh_/);
});

test('one info line per socket opened and closed: principal, duration, frames, close code; no key', async () => {
  const { key } = await server.owner();
  const [{ id }] = (await db.sql`SELECT id::text FROM api_keys ORDER BY created_at DESC LIMIT 1`) as unknown as [{ id: string }];
  const client = await server.connect(key);
  await client.request({ type: 'subscribeAll' });
  client.socket.close(1000, 'bye');
  await client.closed;
  // The server's close log line follows the client's close handshake; wait for it to be written.
  while (!lines.some((l) => l.msg === 'websocket closed' && l.principal === id)) await new Promise((resolve) => setImmediate(resolve));
  const opened = lines.find((l) => l.msg === 'websocket open' && l.principal === id)!;
  const closed = lines.find((l) => l.msg === 'websocket closed' && l.principal === id)!;
  assert.equal(opened.level, 30);
  assert.ok(opened.reqId, 'the upgrade request’s id');
  assert.equal(closed.reqId, opened.reqId);
  assert.equal(closed.framesIn, 1);
  assert.equal(closed.framesOut, 1);
  assert.equal(closed.closeCode, 1000);
  assert.equal(closed.closedBy, 'client');
  assert.ok(closed.durationMs >= 0);
  assert.ok(!JSON.stringify(lines).includes(key), 'the key is in no log line');
});

test(
  'on SIGTERM /readyz fails first while /healthz and open sockets still answer; then the process exits',
  { timeout: 60_000 },
  async () => {
    const proc = await startServerProcess(db.url, { SHUTDOWN_DRAIN_MS: '3000' });
    assert.equal((await fetch(`${proc.url}/readyz`)).status, 200);
    const { key } = await server.admin();
    const client = await TestClient.connect(proc.wsUrl, { 'x-makima-api-key': key });
    const exited = once(proc.child, 'exit');
    proc.child.kill('SIGTERM');
    let ready = 200;
    while (ready === 200) ready = (await fetch(`${proc.url}/readyz`)).status;
    assert.equal(ready, 503);
    assert.equal((await fetch(`${proc.url}/healthz`)).status, 200, 'still alive while draining');
    assert.deepEqual(await client.request({ type: 'subscribeAll' }), { type: 'subscribedAll' }, 'open sockets still served');
    await assert.rejects(TestClient.connect(proc.wsUrl, { 'x-makima-api-key': key }), { status: 503 });
    assert.equal((await client.closed).code, 1001);
    const [code] = await exited;
    assert.equal(code, 0);
  },
);
