/**
 * What the example host answers when a handler fails: an outage (the plugin's
 * MeshBusUnavailableError, a query without a connection, a server shutting down) is a retryable
 * 503 UNAVAILABLE with Retry-After; a notification the plugin refuses is a 400 INVALID_EVENT; a bug
 * (a query error of our own) stays a 500 that says nothing more. The real outage, a PostgreSQL
 * restart, is test/restart.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import postgres from 'postgres';
import { MeshBusUnavailableError, MeshPublishError } from '../src/index.js';
import { buildApp, isDatabaseUnavailable } from '../example/src/app.js';
import { freePort } from '../example/src/embedded-postgres.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';

let db: TestDatabase;
let app: FastifyInstance;
let base: string;
/** A client of a free port (nobody listens): its queries fail as with a database that is down. */
let nowhere: postgres.Sql;

before(async () => {
  db = await createTestDatabase();
  app = await buildApp({ sql: db.sql, logger: false });
  const silent = new URL(db.url);
  silent.port = String(await freePort());
  nowhere = postgres(silent.toString(), { max: 1, connect_timeout: 2, onnotice: () => {} });
  // Handlers that fail the ways the task routes can.
  app.get('/fail/bus', async () => {
    throw new MeshBusUnavailableError(new Error('write CONNECTION_CLOSED'));
  });
  app.get('/fail/refused', async () => nowhere`SELECT 1`);
  app.get('/fail/shutdown', async () => {
    throw new postgres.PostgresError({ code: '57P01', message: 'terminating connection due to administrator command' } as never);
  });
  app.get('/fail/invalid', async () => app.mesh.taskUpdates.publish({ taskId: 'not a uuid' } as never));
  app.get('/fail/bug', async () => db.sql`SELECT * FROM no_such_table`);
  app.get('/fail/plain', async () => {
    throw new Error('a bug');
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
});
after(async () => {
  await app.close();
  await nowhere.end({ timeout: 0 });
  await db.drop();
});

async function get(path: string) {
  const res = await fetch(`${base}${path}`);
  return { status: res.status, retryAfter: res.headers.get('retry-after'), body: (await res.json()) as { code: string; message: string } };
}

test('an outage answers 503 UNAVAILABLE with Retry-After', async () => {
  for (const path of ['/fail/bus', '/fail/refused', '/fail/shutdown']) {
    const { status, retryAfter, body } = await get(path);
    assert.deepEqual([path, status, body.code], [path, 503, 'UNAVAILABLE']);
    assert.match(retryAfter ?? '', /^[1-9][0-9]*$/, path);
  }
});

test('a notification the plugin refuses answers 400 INVALID_EVENT', async () => {
  const { status, retryAfter, body } = await get('/fail/invalid');
  assert.deepEqual([status, body.code, retryAfter], [400, 'INVALID_EVENT', null]);
  assert.match(body.message, /invalid notification/);
});

test('a bug stays a 500 that tells nothing', async () => {
  for (const path of ['/fail/bug', '/fail/plain']) {
    const { status, retryAfter, body } = await get(path);
    assert.deepEqual([path, status, retryAfter, body], [path, 500, null, { code: 'INTERNAL_ERROR', message: 'internal error' }]);
  }
});

test('isDatabaseUnavailable: connection codes and SQLSTATEs of an outage, through causes; not bugs', () => {
  const pg = (code: string) => new postgres.PostgresError({ code, message: code } as never);
  const coded = (code: string) => Object.assign(new Error(code), { code });
  for (const error of [
    coded('CONNECTION_CLOSED'),
    coded('CONNECTION_DESTROYED'),
    coded('CONNECT_TIMEOUT'),
    coded('ECONNREFUSED'),
    pg('57P01'),
    pg('57P03'),
    pg('08006'),
    pg('53300'),
    pg('57014'),
    new MeshBusUnavailableError(coded('ECONNRESET')),
    new Error('wrapped', { cause: coded('CONNECTION_CLOSED') }),
  ]) {
    assert.equal(isDatabaseUnavailable(error), true, String((error as { code?: string }).code ?? error.message));
  }
  for (const error of [
    pg('23505'),
    pg('42P01'),
    pg('22012'),
    coded('08006'),
    new MeshPublishError('bad'),
    new Error('plain'),
    'CONNECTION_CLOSED',
    undefined,
  ]) {
    assert.equal(isDatabaseUnavailable(error), false, String(error));
  }
});
