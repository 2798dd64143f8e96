/**
 * Migrations a DBA can run: the plugin's objects live in `postgres.schema` and every statement
 * names them qualified (a connection whose search_path is only pg_catalog works); `migrate: true`
 * looks before it touches anything, so an application role that owns nothing starts once a DBA
 * migrated; otherwise the start fails naming what is missing and the command that creates it; the
 * tickets table comes only with tickets; the README's list is what the migration creates; the CLI
 * prints the same SQL. With a real non-owner role, created here and dropped after.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import Fastify, { type FastifyInstance } from 'fastify';
import postgres, { type Sql } from 'postgres';
import meshSubscriptions, { MeshSchemaError, SCHEMA_VERSION, migrate, migrationSql, type MeshSubscriptionsOptions } from '../src/index.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { TestClient } from './helpers/ws-client.js';

const execFileAsync = promisify(execFile);
const root = fileURLToPath(new URL('..', import.meta.url));
/** The CLI from source, from the checkout whatever the current folder. */
const cli = (args: string[], env: NodeJS.ProcessEnv = process.env) =>
  execFileAsync(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { cwd: root, env });
const admin = { ownerId: null, admin: true };

/** A plugin on port 0 with an admin for everyone; `ready` is whether the start succeeded. */
async function host(options: Partial<MeshSubscriptionsOptions>): Promise<{ app: FastifyInstance; started: Promise<void> }> {
  const app = Fastify();
  await app.register(meshSubscriptions, { authenticate: async () => admin, ...options });
  return { app, started: app.listen({ host: '127.0.0.1', port: 0 }).then(() => undefined) };
}

/** The start's MeshSchemaError, whose message must say each of `quoted`. */
async function startFails(started: Promise<void>, ...quoted: (string | RegExp)[]): Promise<string> {
  let message = '';
  await assert.rejects(started, (error: unknown) => {
    assert.ok(error instanceof MeshSchemaError, `not a MeshSchemaError: ${String(error)}`);
    assert.equal(error.code, 'SCHEMA_NOT_READY');
    message = error.message;
    return true;
  });
  for (const q of quoted)
    assert.ok(typeof q === 'string' ? message.includes(q) : q.test(message), `${JSON.stringify(message)} does not say ${String(q)}`);
  return message;
}

const wsUrl = (app: FastifyInstance) => `ws://127.0.0.1:${(app.server.address() as { port: number }).port}/api/v1/mesh/tasks/subscribe`;

/** Publishes through the plugin and sees it arrive on a socket: the role may read and write the log. */
async function roundTrip(app: FastifyInstance, taskId: string): Promise<void> {
  const client = await TestClient.connect(wsUrl(app));
  try {
    assert.equal((await client.request({ type: 'subscribe', taskId })).type, 'subscribed');
    await app.mesh.taskUpdates.publish({ taskId, version: 7, status: 'running', updatedFields: ['status'], updatedBy: 'test' });
    const frame = await client.next();
    assert.equal(frame.type, 'taskUpdated');
    assert.equal(frame.version, 7);
  } finally {
    await client.close();
  }
}

const objectsIn = async (sql: Sql<any>, schema: string) => ({
  tables: (
    await sql<{ name: string }[]>`
      SELECT c.relname::text AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = ${schema} AND c.relkind = 'r' ORDER BY 1`
  ).map((r) => r.name),
  indexes: (
    await sql<{ name: string }[]>`
      SELECT c.relname::text AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = ${schema} AND c.relkind = 'i' AND c.relname NOT LIKE '%\\_pkey' ORDER BY 1`
  ).map((r) => r.name),
  functions: (
    await sql<{ name: string }[]>`
      SELECT p.proname::text AS name FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = ${schema} ORDER BY 1`
  ).map((r) => r.name),
});

let db: TestDatabase;
let role: string;
let password: string;
/** Connected as the application role: owns nothing, may not create in public. */
let appSql: Sql<any>;
let server: Sql<any>;

before(async () => {
  db = await createTestDatabase();
  server = postgres(process.env.MESH_TEST_DATABASE_URL ?? process.env.DATABASE_URL!, { max: 1, onnotice: () => {} });
  role = `mesh_app_${randomBytes(4).toString('hex')}`;
  password = randomBytes(12).toString('hex');
  await server.unsafe(`CREATE ROLE ${role} LOGIN PASSWORD '${password}'`);
  // As on PostgreSQL 15 and later whatever the server's version: no one but the owner creates in public.
  await db.sql`REVOKE CREATE ON SCHEMA public FROM PUBLIC`;
  await db.sql.unsafe(`GRANT SELECT (id, owner_id) ON tasks TO ${role}`);
  const url = new URL(db.url);
  url.username = role;
  url.password = password;
  appSql = postgres(url.toString(), { max: 4, onnotice: () => {} });
});

after(async () => {
  await appSql?.end({ timeout: 1 });
  await db.drop();
  await server.unsafe(`DROP ROLE IF EXISTS ${role}`);
  await server.end({ timeout: 1 });
});

describe('a role that owns nothing', () => {
  test('with migrate: true on an empty database, the start fails naming what is missing and the command', async () => {
    const { app, started } = await host({ sql: appSql });
    try {
      await startFails(
        started,
        'missing table "public"."mesh_event_log"',
        'function "public".mesh_log_cursor(xid8, bigint)',
        `migrating as role "${role}" failed (permission denied for schema public)`,
        'npx mesh-subscriptions migrate --print | psql "$DATABASE_URL"',
      );
    } finally {
      await app.close();
    }
    assert.deepEqual((await objectsIn(db.sql, 'public')).functions, [], 'nothing was created');
  });

  test('with migrate: false, the start fails naming the missing objects and the command for these options, creating nothing', async () => {
    const { app, started } = await host({
      sql: appSql,
      reauthenticate: async (p) => p,
      postgres: { migrate: false, schema: 'mesh_dba' },
      tasks: { table: 'public.tasks' },
    });
    try {
      const message = await startFails(
        started,
        'missing schema "mesh_dba"',
        'With postgres.migrate off',
        'npx mesh-subscriptions migrate --print --schema mesh_dba --tasks-table public.tasks --tickets | psql "$DATABASE_URL"',
      );
      assert.ok(!message.includes('relation'), message);
    } finally {
      await app.close();
    }
    assert.equal((await db.sql`SELECT 1 FROM pg_namespace WHERE nspname = 'mesh_dba'`).length, 0);
  });

  test('once a DBA migrated without grants, the start names each privilege it lacks and the grant command', async () => {
    await migrate(db.sql, { schema: 'mesh_nogrant' });
    const { app, started } = await host({ sql: appSql, postgres: { schema: 'mesh_nogrant' } });
    try {
      await startFails(
        started,
        `role "${role}" lacks USAGE on schema "mesh_nogrant"`,
        'INSERT on "mesh_nogrant"."mesh_event_log"',
        `--grant-to ${role}`,
      );
    } finally {
      await app.close();
    }
  });

  test('once a DBA migrated (with the CLI’s SQL and its grants), it starts without DDL: publishes, delivers, mints tickets', async () => {
    const { stdout } = await cli([
      'migrate',
      '--print',
      '--schema',
      'mesh_dba',
      '--tasks-table',
      'public.tasks',
      '--tickets',
      '--grant-to',
      role,
    ]);
    assert.match(stdout, new RegExp(`^BEGIN;\n-- mesh-subscriptions: the PostgreSQL bus's objects, schema version ${SCHEMA_VERSION}`));
    // As psql would: the whole script, its BEGIN and COMMIT included, on one connection.
    const dba = postgres(db.url, { max: 1, onnotice: () => {} });
    await dba.unsafe(stdout).finally(() => dba.end({ timeout: 1 }));
    const metaBefore = await db.sql`SELECT to_jsonb(m) AS meta FROM mesh_dba.mesh_event_log_meta m`;
    // Any DDL would fail for this role: it owns none of the objects and may create nothing.
    const { app, started } = await host({
      sql: appSql,
      reauthenticate: async (p) => p,
      postgres: { schema: 'mesh_dba', migrate: true },
      tasks: { table: 'public.tasks' },
    });
    try {
      await started;
      const [task] = await db.sql<{ id: string }[]>`INSERT INTO tasks (owner_id) VALUES (${randomUUID()}) RETURNING id::text AS id`;
      await roundTrip(app, task!.id);
      const minted = await fetch(`http://127.0.0.1:${(app.server.address() as { port: number }).port}/api/v1/mesh/tickets`, {
        method: 'POST',
      });
      assert.equal(minted.status, 201);
      // And publishing from SQL, as that role, by the functions' qualified names.
      const [row] = await appSql<{ cursor: string }[]>`
        SELECT mesh_dba.mesh_publish_task_update(${task!.id}::uuid, NULL, 8, 'done', '{status}', 'sql') AS cursor`;
      assert.match(row!.cursor, /^[0-9a-f]{8}\.\d+\.\d+$/);
    } finally {
      await app.close();
    }
    assert.deepEqual(await db.sql`SELECT to_jsonb(m) AS meta FROM mesh_dba.mesh_event_log_meta m`, metaBefore);
  });

  test('objects of an older version, or made for other tasks columns, are named and not touched', async () => {
    await migrate(db.sql, { schema: 'mesh_old', grantTo: role });
    await db.sql`UPDATE mesh_old.mesh_event_log_meta SET schema_version = 1`;
    const old = await host({ sql: appSql, postgres: { schema: 'mesh_old' } });
    try {
      await startFails(
        old.started,
        `the objects are at schema version 1, this plugin needs ${SCHEMA_VERSION}`,
        new RegExp(`migrating as role "${role}" failed \\((permission denied for schema mesh_old|must be owner)`),
      );
    } finally {
      await old.app.close();
    }
    await db.sql`UPDATE mesh_old.mesh_event_log_meta SET schema_version = ${SCHEMA_VERSION}`;
    await db.sql.unsafe(`ALTER TABLE tasks ADD COLUMN IF NOT EXISTS user_id uuid; GRANT SELECT (user_id) ON tasks TO ${role}`);
    const other = await host({ sql: appSql, postgres: { schema: 'mesh_old', migrate: false }, tasks: { ownerColumn: 'user_id' } });
    try {
      await startFails(
        other.started,
        'the SQL functions settle owners from "tasks"("id", "owner_id"), these options from "tasks"("id", "user_id")',
        '--tasks-owner-column user_id',
      );
    } finally {
      await other.app.close();
    }
  });
});

describe('the owner of the schema', () => {
  test('brings objects from before versions (no stamp) up to this version, keeping the log', async () => {
    await migrate(db.sql, { schema: 'mesh_v1' });
    // The layout before versions: no stamp columns.
    await db.sql`ALTER TABLE mesh_v1.mesh_event_log_meta DROP COLUMN schema_version, DROP COLUMN owners_from`;
    const [{ log_id }] = (await db.sql`SELECT log_id FROM mesh_v1.mesh_event_log_meta`) as unknown as [{ log_id: string }];
    const { app, started } = await host({ sql: db.sql, postgres: { schema: 'mesh_v1' } });
    try {
      await started;
      const [meta] = await db.sql`SELECT log_id, schema_version, owners_from FROM mesh_v1.mesh_event_log_meta`;
      assert.deepEqual({ ...meta }, { log_id, schema_version: SCHEMA_VERSION, owners_from: '"tasks"("id", "owner_id")' });
    } finally {
      await app.close();
    }
  });

  test('postgres.schema: every statement names it, so a connection whose search_path is only pg_catalog works', async () => {
    const bare = postgres(db.url, { max: 4, onnotice: () => {}, connection: { search_path: 'pg_catalog' } });
    const { app, started } = await host({
      sql: bare,
      reauthenticate: async (p) => p,
      tasks: { table: 'public.tasks' },
      postgres: { schema: 'mesh_bare', retentionPerTask: 2, pruneIntervalMs: 50 },
    });
    try {
      await started;
      // Pruning keeps two events of the task: of the four published below, two go.
      let prunedRows = 0;
      const pruned = new Promise<void>((resolve) =>
        app.mesh.events.on('pruned', ({ rows }: { rows: number }) => {
          prunedRows += rows;
          if (prunedRows >= 2) resolve();
        }),
      );
      const [task] = await db.sql<{ id: string }[]>`INSERT INTO tasks (owner_id) VALUES (${randomUUID()}) RETURNING id::text AS id`;
      await roundTrip(app, task!.id);
      // A replay (`since`) reads the log too.
      const first = await app.mesh.taskUpdates.publish({ taskId: task!.id, version: 8, status: 's', updatedFields: [], updatedBy: 't' });
      await app.mesh.taskUpdates.publish({ taskId: task!.id, version: 9, status: 's', updatedFields: [], updatedBy: 't' });
      const client = await TestClient.connect(wsUrl(app));
      await client.request({ type: 'subscribe', taskId: task!.id, since: first });
      assert.equal((await client.next()).version, 9);
      await client.close();
      // SQL publishing with the same bare search_path: the functions name their objects themselves.
      const [row] = await bare<{ cursor: string }[]>`
        SELECT mesh_bare.mesh_publish_task_update(${task!.id}::uuid, NULL, 10, 'done', '{}', 'sql') AS cursor`;
      assert.ok(row!.cursor);
      const [settled] = await db.sql`SELECT owner_id::text FROM mesh_bare.mesh_event_log ORDER BY txid DESC, id DESC LIMIT 1`;
      const [owner] = await db.sql`SELECT owner_id::text FROM tasks WHERE id = ${task!.id}`;
      assert.equal(settled!.owner_id, owner!.owner_id);
      // And pruning, which keeps the newest two.
      await pruned;
      const kept =
        await db.sql`SELECT (payload->>'version')::int AS v FROM mesh_bare.mesh_event_log WHERE task_id = ${task!.id} ORDER BY v`;
      assert.deepEqual(
        kept.map((r) => r.v),
        [9, 10],
      );
    } finally {
      await app.close();
      await bare.end({ timeout: 1 });
    }
    assert.equal((await db.sql`SELECT to_regclass('public.mesh_event_log') AS r`)[0]!.r, null, 'nothing in public');
  });

  test('the tickets table only with tickets on; the README lists exactly what the migration creates', async () => {
    const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8');
    const list = readme.slice(readme.indexOf('<!-- mesh-objects:start'), readme.indexOf('<!-- mesh-objects:end -->'));
    const rows = [...list.matchAll(/^\| `(\w+)` \| (table|index|function) \| ([^|]+) \|/gm)].map(([, name, kind, when]) => ({
      name: name!,
      kind: kind!,
      tickets: when!.startsWith('with tickets on'),
    }));
    assert.ok(rows.length > 0, 'the README list is where the markers say');
    const listed = (kind: string, tickets: boolean) =>
      rows
        .filter((r) => r.kind === kind && (tickets || !r.tickets))
        .map((r) => r.name)
        .sort();
    for (const tickets of [false, true]) {
      const schema = `mesh_list_${String(tickets)}`;
      const { app, started } = await host({ sql: db.sql, postgres: { schema }, ...(tickets ? { reauthenticate: async (p) => p } : {}) });
      try {
        await started;
      } finally {
        await app.close();
      }
      assert.deepEqual(await objectsIn(db.sql, schema), {
        tables: listed('table', tickets),
        indexes: listed('index', tickets),
        functions: listed('function', tickets),
      });
    }
  });

  test('the CLI prints what migrate() runs; bad flags are refused with the usage', async () => {
    const { stdout } = await cli(['migrate', '--print', '--schema', 'mesh_cli']);
    assert.equal(stdout, `BEGIN;\n${migrationSql({ schema: 'mesh_cli' })}COMMIT;\n`);
    await assert.rejects(cli(['migrate', '--print', '--schema', 'x;y']), (error: any) => {
      assert.equal(error.code, 2);
      assert.match(error.stderr, /schema must be a plain SQL identifier/);
      assert.match(error.stderr, /Usage: mesh-subscriptions migrate/);
      return true;
    });
    // Run against a database (DATABASE_URL), as a DBA would.
    const { stdout: done } = await cli(['migrate', '--schema', 'mesh_cli', '--tickets'], { ...process.env, DATABASE_URL: db.url });
    assert.equal(done, `migrated schema mesh_cli to version ${SCHEMA_VERSION}\n`);
    assert.deepEqual((await objectsIn(db.sql, 'mesh_cli')).tables, [
      'mesh_event_log',
      'mesh_event_log_meta',
      'mesh_event_log_pruned_tasks',
      'mesh_ws_tickets',
    ]);
  });
});
