/**
 * Behind a connection pooler: Debian's PgBouncer 1.18 in transaction mode, started by this test in
 * front of the test database (test/helpers/pgbouncer.ts). The example host's `sql` goes through it
 * (`prepare: false`) and the plugin's `directSql` goes to PostgreSQL directly: every change
 * answered 200 is made, logged and delivered, the LISTEN connection stays, readiness is true.
 * Set up otherwise, the plugin refuses to start and says why. And the cause, kept as a test: with
 * named prepared statements, postgres.js's `sql.begin` resolves though PostgreSQL rolled back.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import postgres, { type Sql } from 'postgres';
import { buildApp } from '../example/src/app.js';
import { Listener } from '../src/bus/postgres/listener.js';
import { MeshOptionsError } from '../src/errors.js';
import { deferred } from './helpers/async.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { pgbouncerMissing, startPgbouncer, type Pgbouncer } from './helpers/pgbouncer.js';
import { startTestServer } from './helpers/server.js';
import type { Frame } from './helpers/ws-client.js';

const missing = pgbouncerMissing();
let db: TestDatabase;
let pgbouncer: Pgbouncer;
/** Clients made here, ended after the tests. */
const clients: Sql<any>[] = [];

function throughPooler(options: postgres.Options<any> = {}): Sql<any> {
  const sql = postgres(pgbouncer.through(db.url), { max: 10, onnotice: () => {}, ...options });
  clients.push(sql);
  return sql;
}

describe('behind PgBouncer in transaction mode', { skip: missing, timeout: 120_000 }, () => {
  before(async () => {
    db = await createTestDatabase();
    pgbouncer = await startPgbouncer(db.url, 'transaction');
  });
  after(async () => {
    await Promise.all(clients.map((sql) => sql.end({ timeout: 1 })));
    await pgbouncer?.stop();
    await db?.drop();
  });

  test('with directSql: every change answered is made, logged and delivered; the listener stays; readiness is true', async () => {
    const listenTimeoutMs = 1_000;
    const server = await startTestServer({
      db: { ...db, sql: throughPooler({ prepare: false }), drop: async () => {} },
      mesh: { directSql: db.sql, postgres: { listenTimeoutMs } },
    });
    let restarts = 0;
    server.app.mesh.events.on('listenerRestarted', () => restarts++);
    try {
      const { key } = await server.owner();
      const watcher = await server.connect(key);
      assert.equal((await watcher.request({ type: 'subscribeAll' })).type, 'subscribedAll');

      const tasks: string[] = [];
      for (let i = 0; i < 4; i++) {
        const created = await server.http('POST', '/api/v1/mesh/tasks', key, { name: `task ${i}` });
        assert.equal(created.status, 201);
        tasks.push(created.body.id);
      }
      // Concurrent changes: each request's transaction runs on whichever server the pooler gives it.
      const answered = new Map<string, number>(tasks.map((t) => [t, 1]));
      for (let round = 1; round <= 15; round++) {
        await Promise.all(
          tasks.map(async (taskId) => {
            const res = await server.http('PATCH', `/api/v1/mesh/tasks/${taskId}`, key, { status: `step ${round}` });
            assert.equal(res.status, 200, JSON.stringify(res.body));
            assert.equal(res.body.status, `step ${round}`);
            answered.set(taskId, Math.max(answered.get(taskId)!, res.body.version));
          }),
        );
      }
      const outputs = await Promise.all(
        Array.from({ length: 10 }, (_, i) =>
          server.http('POST', `/api/v1/mesh/tasks/${tasks[i % tasks.length]}/output`, key, {
            messageType: 'assistant',
            content: `line ${i}`,
          }),
        ),
      );
      assert.deepEqual(
        outputs.map((o) => o.status),
        outputs.map(() => 202),
      );

      // What was answered is what the table and the log hold.
      for (const taskId of tasks) {
        const [row] = await db.sql<{ version: number; status: string }[]>`SELECT version, status FROM tasks WHERE id = ${taskId}`;
        assert.deepEqual(row, { version: 16, status: 'step 15' });
        assert.equal(answered.get(taskId), 16);
        const versions = await db.sql<{ v: number }[]>`
          SELECT (payload->>'version')::int AS v FROM mesh_event_log WHERE task_id = ${taskId} AND kind = 'update' ORDER BY txid, id`;
        assert.deepEqual(
          versions.map((r) => r.v),
          Array.from({ length: 16 }, (_, i) => i + 1),
        );
      }
      const [logged] = await db.sql<{ n: number }[]>`SELECT count(*)::int AS n FROM mesh_event_log WHERE kind = 'output'`;
      assert.equal(logged!.n, 10);

      // And the subscriber got every update, in order per task.
      const seen = new Map<string, number[]>(tasks.map((t) => [t, []]));
      while ([...seen.values()].some((v) => v.length < 16)) {
        const frame: Frame = await watcher.next();
        if (frame.type === 'taskUpdated') seen.get(frame.taskId as string)!.push(frame.version as number);
      }
      for (const versions of seen.values())
        assert.deepEqual(
          versions,
          Array.from({ length: 16 }, (_, i) => i + 1),
        );

      // The LISTEN connection is the same session a few timeouts later, and still hears.
      const listenerPid = async () =>
        (
          await db.sql<{ pid: number }[]>`
            SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'listen %mesh_event_log_hb_%'`
        ).map((r) => r.pid);
      const before = await listenerPid();
      assert.equal(before.length, 1);
      assert.equal(server.app.mesh.readiness().listening, true);
      // The time window is the behaviour under test: a silent listener is replaced after listenTimeoutMs.
      await new Promise((resolve) => setTimeout(resolve, 3 * listenTimeoutMs));
      assert.deepEqual(await listenerPid(), before);
      assert.equal(restarts, 0);
      assert.equal(server.app.mesh.readiness().listening, true);
      const ready = await fetch(`${server.baseUrl}/readyz`);
      assert.equal(ready.status, 200);
      assert.doesNotMatch(pgbouncer.output(), /when not linked/);
    } finally {
      await server.close();
    }
  });

  test('without directSql, a client through the pooler is refused at start, saying why', async () => {
    const app = await buildApp({ sql: throughPooler({ prepare: false }) });
    try {
      await assert.rejects(
        async () => void (await app.ready()),
        (error: Error) => {
          assert.ok(error instanceof MeshOptionsError, String(error));
          assert.equal(error.code, 'INVALID_OPTIONS');
          assert.match(error.message, /option "sql" reaches PostgreSQL through a transaction-mode pooler/);
          assert.match(error.message, /pass "directSql", a client connected to PostgreSQL directly/);
          return true;
        },
      );
    } finally {
      await app.close();
    }
  });

  test('sql through the pooler with named prepared statements (prepare: true) is refused, saying why', async () => {
    const app = await buildApp({ sql: throughPooler(), mesh: { directSql: db.sql } });
    try {
      await assert.rejects(
        async () => void (await app.ready()),
        (error: Error) => {
          assert.ok(error instanceof MeshOptionsError, String(error));
          assert.match(error.message, /prepares statements/);
          assert.match(error.message, /prepare: false/);
          return true;
        },
      );
    } finally {
      await app.close();
    }
  });

  test('directSql through the pooler is refused, saying why', async () => {
    const pooled = throughPooler({ prepare: false });
    const app = await buildApp({ sql: pooled, mesh: { directSql: throughPooler({ prepare: false }) } });
    try {
      await assert.rejects(
        async () => void (await app.ready()),
        (error: Error) => {
          assert.ok(error instanceof MeshOptionsError, String(error));
          assert.match(error.message, /option "directSql" reaches PostgreSQL through a transaction-mode pooler/);
          return true;
        },
      );
    } finally {
      await app.close();
    }
  });

  test('a LISTEN connection through the pooler hears nothing, and is never reported listening, replaced or not', async () => {
    const listenTimeoutMs = 200;
    const pooled = throughPooler({ prepare: false });
    const reader = { announce: () => {}, wake: () => {} };
    const listener = new Listener(pooled, pooled, { listenTimeoutMs }, pino({ level: 'silent' }), reader);
    try {
      await listener.listen();
      await assert.rejects(listener.confirm(), /did not hear its own notification/);
      assert.equal(listener.listening(), false);
      // Past the timeout the check replaces the connection; the new one has heard nothing either.
      await new Promise((resolve) => setTimeout(resolve, listenTimeoutMs + 50));
      await listener.check();
      assert.equal(listener.listening(), false);
    } finally {
      listener.halt();
      await listener.close();
    }
  });

  test('the cause: postgres.js with prepare: true through the pooler resolves sql.begin though PostgreSQL rolled back', async () => {
    // Kept as a test: when a postgres.js release stops re-running a COMMIT this way, it fails, and
    // the refusal of `prepare: true` (src/bus/postgres/pooler.ts) may be relaxed.
    await db.sql`CREATE TABLE IF NOT EXISTS pooler_canary (id uuid)`;
    const a = throughPooler({ max: 1 });
    const b = throughPooler({ max: 1 });
    // `a` prepares its COMMIT on server S and leaves it idle.
    const [first] = await a.begin((tx) => tx<{ pid: number }[]>`SELECT pg_backend_pid() AS pid`);
    // `b` takes S (the pooler hands out the server used last) and keeps it for its transaction.
    const held = deferred<number>();
    const release = deferred();
    const holding = b.begin(async (tx) => {
      const [row] = await tx<{ pid: number }[]>`SELECT pg_backend_pid() AS pid`;
      held.resolve(row!.pid);
      await release.promise;
    });
    assert.equal(await held.promise, first!.pid, 'the pooler gave b the server a left');
    const id = randomUUID();
    // `a`'s next transaction runs on another server, where its COMMIT was never prepared.
    const [row] = await a.begin((tx) => tx<{ pid: number }[]>`INSERT INTO pooler_canary VALUES (${id}) RETURNING pg_backend_pid() AS pid`);
    assert.notEqual(row!.pid, first!.pid);
    release.resolve();
    await holding;
    const [found] = await db.sql<{ n: number }[]>`SELECT count(*)::int AS n FROM pooler_canary WHERE id = ${id}`;
    assert.equal(found!.n, 0, 'sql.begin resolved, yet the row is not there');
  });
});

test('the example server reads DATABASE_DIRECT_URL, and refuses it without DATABASE_URL', async () => {
  const { readConfig } = await import('../example/src/config.js');
  const direct = 'postgres://u@127.0.0.1:5432/mesh';
  assert.equal(readConfig({ DATABASE_URL: 'postgres://u@127.0.0.1:6432/mesh', DATABASE_DIRECT_URL: direct }).databaseDirectUrl, direct);
  assert.equal(readConfig({}).databaseDirectUrl, undefined);
  assert.throws(() => readConfig({ DATABASE_DIRECT_URL: direct }), /DATABASE_DIRECT_URL is set without DATABASE_URL/);
});
