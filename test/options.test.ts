/**
 * The options schema: the defaults it resolves are the documented ones, the committed README
 * options tables are what `npm run options-table` writes today, the grouped and the flat forms
 * mean the same (and not both at once), every grouped option is checked, and each group reaches
 * the part of the plugin that reads it.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { describe, test } from 'node:test';
import { KindGuard, type TObject, type TSchema } from '@sinclair/typebox';
import Fastify from 'fastify';
import type { Sql } from 'postgres';
import { README_FILE, withOptionsTable } from '../scripts/options-table.js';
import meshSubscriptions, { CloseCode, MeshOptionsError } from '../src/index.js';
import { DEFAULTS, FLAT_OPTION_NAMES, PlainOptionsSchema, resolveOptions, type GroupName, type Principal } from '../src/options.js';
import { createTestDatabase } from './helpers/database.js';
import { TestClient, refusal } from './helpers/ws-client.js';

test('the committed README options table is current (run `npm run options-table`)', async () => {
  const readme = await readFile(README_FILE, 'utf8');
  assert.equal(readme, withOptionsTable(readme));
});

test('defaults resolve from the schema to the documented values', () => {
  const resolved = resolveOptions({ authenticate: async () => null, resolveOwners: async () => new Map() });
  const { authenticate: _a, resolveOwners: _r, metricsRegistry, allowedOrigins, ...plain } = resolved;
  assert.deepEqual(plain, {
    reauthenticate: undefined,
    sql: undefined,
    directSql: undefined,
    prefix: '/api/v1',
    historyRoutes: true,
    bus: 'memory',
    limits: {
      maxPayload: 64 * 1024,
      maxFramesPerSecond: 100,
      frameBurst: 200,
      floodCloseAfterMs: 10_000,
      maxSubscriptionsPerConnection: 1_000,
      maxConnectionsPerPrincipal: 100,
      maxConnections: Number.POSITIVE_INFINITY,
    },
    backpressure: { soft: 1024 * 1024, hard: 8 * 1024 * 1024, timeoutMs: 30_000 },
    heartbeat: { intervalMs: 30_000 },
    reauth: { intervalMs: 60_000 },
    replay: { historySize: 10_000, maxEvents: 10_000, concurrency: 4 },
    tasks: { table: 'tasks', idColumn: 'id', ownerColumn: 'owner_id' },
    owners: { lookupTimeoutMs: 5_000 },
    postgres: {
      schema: 'public',
      migrate: true,
      publishTimeoutMs: 5_000,
      retentionMs: 24 * 60 * 60 * 1000,
      retentionPerTask: 10_000,
      pruneIntervalMs: 60_000,
      pollIntervalMs: 1_000,
      listenTimeoutMs: 10_000,
      notifyRows: false,
    },
    tickets: { enabled: false, ttlMs: 30_000 },
    shutdown: { timeoutMs: 10_000 },
  });
  assert.equal(allowedOrigins.size, 0);
  assert.equal(typeof metricsRegistry.metrics, 'function');
  assert.deepEqual(DEFAULTS.allowedOrigins, []);
  assert.equal(DEFAULTS.limits.maxPayload, 64 * 1024);
});

test('null means "not given" for prefix, tasksTable and bus, and is refused for numbers and booleans, as before', () => {
  const base = { authenticate: async () => null, resolveOwners: async () => new Map() };
  assert.equal(resolveOptions({ ...base, prefix: null, tasksTable: null, bus: null }).prefix, '/api/v1');
  assert.throws(
    () => resolveOptions({ ...base, maxConnections: null }),
    /"maxConnections" must be a positive integer or Infinity, got null/,
  );
  assert.throws(() => resolveOptions({ ...base, maxPayload: 2 ** 53 }), /"maxPayload" must be a positive integer, got 9007199254740992/);
  assert.throws(() => resolveOptions({ ...base, migrate: null }), /"migrate" must be a boolean/);
  assert.throws(() => resolveOptions({ ...base, historyRoutes: null }), /"historyRoutes" must be a boolean/);
  assert.throws(() => resolveOptions({ ...base, historyRoutes: 'false' }), /"historyRoutes" must be a boolean/);
  assert.equal(resolveOptions({ ...base, historyRoutes: false }).historyRoutes, false);
  assert.throws(() => resolveOptions({ ...base, ownerCacheTtlMs: 0 }), /"ownerCacheTtlMs" must be a positive integer, got 0/);
  assert.equal(
    resolveOptions({ ...base, maxConnections: Number.POSITIVE_INFINITY, ownerCacheSize: 5 }).limits.maxConnections,
    Number.POSITIVE_INFINITY,
  );
  assert.throws(() => resolveOptions({ ...base, prefix: '/' }), /"prefix" must be "" or a path like "\/api\/v1"/);
  assert.equal(resolveOptions({ ...base, prefix: '' }).prefix, '');
});

// ——— The groups, the flat names, and what each part is built with ———

const base = {
  authenticate: async () => null,
  reauthenticate: async (principal: Principal) => principal,
  resolveOwners: async () => new Map<string, string | null>(),
};
type Resolved = Record<string, unknown> & Record<GroupName, Record<string, unknown>>;
const resolve = (options: Record<string, unknown>) => resolveOptions({ ...base, ...options }) as unknown as Resolved;
/** The resolved plain options, without the registry (a new one each time) and the host's functions. */
const plainOf = (resolved: Resolved) => {
  const { metricsRegistry: _m, authenticate: _a, reauthenticate: _r, resolveOwners: _o, ...plain } = resolved;
  return plain;
};

const groups = (Object.entries(PlainOptionsSchema.properties) as Array<[string, TSchema]>).filter((entry): entry is [GroupName, TObject] =>
  KindGuard.IsObject(entry[1]),
);
const groupedOptions = groups.flatMap(([group, schema]) =>
  (Object.entries(schema.properties) as Array<[string, TSchema]>).map(([option, s]) => ({
    group,
    option,
    path: `${group}.${option}`,
    schema: s,
  })),
);
const flatNames = Object.entries(FLAT_OPTION_NAMES).map(([flat, path]) => {
  const [group, option] = path.split('.') as [GroupName, string];
  return { flat, group, option, path, schema: PlainOptionsSchema.properties[group].properties[option as never] as TSchema };
});

/** A valid value other than the resolved default (with `base`, tickets are on by default). */
function another(schema: TSchema): unknown {
  if (schema.type === 'boolean') return schema.default === undefined ? false : !schema.default;
  if (schema.type === 'string') return `${String(schema.default)}_x`;
  return typeof schema.default === 'number' && Number.isFinite(schema.default) ? schema.default + 1 : 7;
}

function refused(options: Record<string, unknown>, ...quoted: string[]): string {
  let message = '';
  assert.throws(
    () => resolve(options),
    (error: unknown) => {
      assert.ok(error instanceof MeshOptionsError, `not a MeshOptionsError: ${String(error)}`);
      message = error.message;
      return true;
    },
  );
  for (const q of quoted) assert.ok(message.includes(q), `${JSON.stringify(message)} does not say ${q}`);
  return message;
}

test('the groups are the ones documented, and every flat name stands for an option of a group', () => {
  assert.deepEqual(
    groups.map(([group]) => group),
    ['limits', 'backpressure', 'heartbeat', 'reauth', 'replay', 'tasks', 'owners', 'postgres', 'tickets', 'shutdown'],
  );
  for (const { flat, path, schema } of flatNames) assert.ok(schema, `${flat} → ${path}: no such option`);
  // Every option that existed before the groups has its flat name, and no two share one; newer ones have none.
  assert.equal(new Set(Object.values(FLAT_OPTION_NAMES)).size, flatNames.length);
  assert.deepEqual(
    groupedOptions.filter(({ path }) => !Object.values(FLAT_OPTION_NAMES).includes(path as never)).map(({ path }) => path),
    ['tasks.idColumn', 'tasks.ownerColumn', 'postgres.schema', 'postgres.notifyRows'],
  );
});

test('each flat name resolves to its grouped option, and means the same as the grouped form', () => {
  for (const { flat, group, option, path, schema } of flatNames) {
    const value = another(schema);
    const byFlat = resolve({ [flat]: value });
    const byGroup = resolve({ [group]: { [option]: value } });
    assert.equal(byFlat[group][option], value, `${flat} did not set ${path}`);
    assert.deepEqual(plainOf(byFlat), plainOf(byGroup), `${flat} and ${path} resolve differently`);
    assert.notDeepEqual(plainOf(byFlat), plainOf(resolve({})), `${flat}: ${String(value)} is the default`);
  }
  // All at once, too: the whole flat form and the whole grouped form resolve alike.
  const flat: Record<string, unknown> = {};
  const grouped: Record<string, Record<string, unknown>> = {};
  for (const { flat: name, group, option, schema } of flatNames) {
    flat[name] = another(schema);
    (grouped[group] ??= {})[option] = another(schema);
  }
  assert.deepEqual(plainOf(resolve(flat)), plainOf(resolve(grouped)));
  // And so do a mix of both, and groups given in part (the rest of the group keeps its defaults).
  const mixed = resolve({ maxPayload: 1024, limits: { maxConnections: 3 }, backpressure: { soft: 10 }, hardBufferLimit: 20 });
  assert.deepEqual(mixed.limits, { ...DEFAULTS.limits, maxPayload: 1024, maxConnections: 3 });
  assert.deepEqual(mixed.backpressure, { soft: 10, hard: 20, timeoutMs: DEFAULTS.backpressure.timeoutMs });
});

test('an option given both flat and grouped is refused, naming both, even with equal values', () => {
  for (const { flat, group, option, path, schema } of flatNames) {
    if (flat === group) continue; // `tickets`: one key, either a boolean or the group
    const value = another(schema);
    refused({ [flat]: value, [group]: { [option]: value } }, `"${flat}"`, `"${path}"`);
  }
  // `undefined` is "not given", in either form.
  assert.equal(resolve({ maxPayload: undefined, limits: { maxPayload: 5 } }).limits.maxPayload, 5);
  assert.equal(resolve({ maxPayload: 5, limits: { maxPayload: undefined } }).limits.maxPayload, 5);
});

test('every grouped option is checked against its schema, under the name it was given', () => {
  for (const { group, option, path, schema } of groupedOptions) {
    const bad =
      schema.type === 'boolean'
        ? ['yes', 1, null]
        : schema.type === 'string'
          ? [0, '', 'a b', 'x;DROP TABLE y', '1x', ...(schema.nullIsUnset === true ? [] : [null])]
          : [0, -1, 1.5, '10', null, Number.NaN];
    for (const value of bad) {
      refused({ [group]: { [option]: value } }, `option "${path}" must be ${String(schema.refusal)}`);
    }
  }
  for (const { flat, group, path, schema } of flatNames) {
    if (flat === group) continue; // `tickets`: below, with the groups
    const message = refused({ [flat]: schema.type === 'boolean' ? 'yes' : 0 }, `option "${flat}" must be ${String(schema.refusal)}`);
    assert.ok(!message.includes(path), message);
  }
  assert.equal(resolve({ limits: { maxConnections: Number.POSITIVE_INFINITY } }).limits.maxConnections, Number.POSITIVE_INFINITY);
  refused(
    { limits: { maxFramesPerSecond: Number.POSITIVE_INFINITY } },
    'option "limits.maxFramesPerSecond" must be a positive integer, got null',
  );
});

test('a group is an object of its own options: anything else, or a key it does not have, is refused', () => {
  for (const [group, schema] of groups) {
    for (const value of [5, 'x', null, [], [1]]) {
      if (group === 'tickets' && typeof value === 'boolean') continue;
      refused(
        { [group]: value },
        `option "${group}" must be an object of the ${group} options (${Object.keys(schema.properties).join(', ')})`,
      );
    }
    refused(
      { [group]: { nope: 1 } },
      `option "${group}.nope" is unknown: the ${group} options are ${Object.keys(schema.properties).join(', ')}`,
    );
    refused({ [group]: { toString: 1 } }, `option "${group}.toString" is unknown`);
    assert.deepEqual(plainOf(resolve({ [group]: {} })), plainOf(resolve({})));
  }
  // A flat name inside a group is not its option.
  refused({ backpressure: { softBufferLimit: 2048 } }, 'option "backpressure.softBufferLimit" is unknown');
  refused({ limits: { maxConection: 5 } }, 'option "limits.maxConection" is unknown');
  // `tickets` is a flat name and a group: a boolean is the flat form, an object the group, nothing else.
  assert.equal(resolve({ tickets: false }).tickets.enabled, false);
  assert.deepEqual(resolve({ tickets: { ttlMs: 5 } }).tickets, { enabled: true, ttlMs: 5 });
  assert.deepEqual(resolve({ tickets: false, ticketTtlMs: 5 }).tickets, { enabled: false, ttlMs: 5 });
  refused(
    { tickets: 'yes' },
    'option "tickets" must be an object of the tickets options (enabled, ttlMs), or a boolean (the flat form of "tickets.enabled")',
  );
});

test('keys the top level does not know are ignored, as before the groups', () => {
  assert.deepEqual(plainOf(resolve({ logLevel: 'info', nonsense: { maxPayload: 0 }, limit: {} })), plainOf(resolve({})));
});

test('the checks across options name each option as it was given', () => {
  refused({ backpressure: { soft: 10, hard: 10 } }, 'option "backpressure.hard" must be larger than "backpressure.soft"');
  refused({ softBufferLimit: 10, hardBufferLimit: 5 }, 'option "hardBufferLimit" must be larger than "softBufferLimit"');
  refused(
    { softBufferLimit: 4 * 1024 * 1024, backpressure: { hard: 2 * 1024 * 1024 } },
    '"backpressure.hard" must be larger than "softBufferLimit"',
  );
  refused({ backpressure: { soft: 9 * 1024 * 1024 } }, '"backpressure.hard" must be larger than "backpressure.soft"');
  const noReauth = { reauthenticate: undefined };
  refused({ ...noReauth, tickets: { enabled: true } }, 'option "tickets.enabled" needs "reauthenticate"');
  refused({ ...noReauth, tickets: true }, 'option "tickets" needs "reauthenticate"');
  assert.equal(resolve({ ...noReauth, tickets: { ttlMs: 5 } }).tickets.enabled, false);
  assert.throws(() => resolve({ bus: 'postgres' }), /option bus: "postgres" needs "sql"/);
});

test('DEFAULTS is grouped like the options, frozen, and is what an empty group resolves to', () => {
  const resolved = resolve({});
  assert.ok(Object.isFrozen(DEFAULTS));
  for (const [group] of groups) {
    assert.ok(Object.isFrozen(DEFAULTS[group]), `DEFAULTS.${group} is not frozen`);
    const { enabled: _e, ...defaulted } = resolved[group] as Record<string, unknown>;
    assert.deepEqual(DEFAULTS[group], group === 'tickets' ? defaulted : resolved[group]);
  }
  assert.equal(DEFAULTS.prefix, '/api/v1');
  assert.deepEqual(DEFAULTS.tasks, { table: 'tasks', idColumn: 'id', ownerColumn: 'owner_id' });
  assert.ok(!('bus' in DEFAULTS) && !('enabled' in DEFAULTS.tickets), 'bus and tickets.enabled depend on other options');
  for (const flat of Object.keys(FLAT_OPTION_NAMES)) {
    if (flat !== 'tickets') assert.ok(!(flat in DEFAULTS), `DEFAULTS.${flat}: DEFAULTS has the grouped names only`);
  }
  // A group of DEFAULTS spreads into a whole group.
  assert.equal(resolve({ limits: { ...DEFAULTS.limits, maxConnections: 10 } }).limits.maxConnections, 10);
});

describe('registering with grouped options', () => {
  test('a bad grouped option, and an option given twice, are refused at registration', async () => {
    for (const [options, message] of [
      [{ limits: { maxPayload: 0 } }, 'mesh-subscriptions: option "limits.maxPayload" must be a positive integer, got 0'],
      [
        { maxConnections: 10, limits: { maxConnections: 20 } },
        'mesh-subscriptions: options "maxConnections" and "limits.maxConnections" are one option, given twice: keep one (the grouped "limits.maxConnections" is preferred)',
      ],
    ] as const) {
      const app = Fastify();
      await assert.rejects(
        async () => {
          await app.register(meshSubscriptions, { ...base, ...options } as never);
          await app.ready();
        },
        (error: unknown) => error instanceof MeshOptionsError && error.message === message,
      );
      await app.close();
    }
  });

  test('each group reaches the part that reads it (memory bus)', async () => {
    const admin: Principal = { ownerId: null, admin: true };
    const app = Fastify();
    await app.register(meshSubscriptions, {
      authenticate: async () => admin,
      reauthenticate: async (principal) => principal,
      resolveOwners: async (ids) => new Map(ids.map((id) => [id, null])),
      prefix: '/grouped',
      limits: { maxPayload: 1024, maxConnections: 2 },
      replay: { historySize: 2 },
      tickets: { ttlMs: 120_000 },
      shutdown: { timeoutMs: 500 },
    });
    await app.listen({ host: '127.0.0.1', port: 0 });
    const { port } = app.server.address() as { port: number };
    const url = `ws://127.0.0.1:${port}/grouped/mesh/tasks/subscribe`;
    try {
      // tickets: the store's time to live.
      const minted = (await (await fetch(`http://127.0.0.1:${port}/grouped/mesh/tickets`, { method: 'POST' })).json()) as {
        expiresAt: string;
      };
      const ttl = Date.parse(minted.expiresAt) - Date.now();
      assert.ok(ttl > 100_000 && ttl <= 120_000, `a ticket lives ${ttl} ms`);

      // replay.historySize: the memory bus keeps the last two events.
      const taskId = randomUUID();
      const publish = (version: number) =>
        app.mesh.taskUpdates.publish({ taskId, ownerId: null, version, status: 's', updatedFields: [], updatedBy: 'test' });
      const cursors = [await publish(1), await publish(2), await publish(3), await publish(4)];
      const client = await TestClient.connect(url);
      await client.request({ type: 'subscribe', taskId, since: cursors[0] });
      assert.deepEqual(await client.next(), { type: 'resyncRequired', subscription: 'subscribe', taskId, reason: 'expired' });
      await client.request({ type: 'unsubscribe', taskId });
      await client.request({ type: 'subscribe', taskId, since: cursors[1] });
      assert.deepEqual([(await client.next()).version, (await client.next()).version], [3, 4]);

      // limits.maxConnections: admission's; limits.maxPayload: ws's and the connection's.
      const second = await TestClient.connect(url);
      assert.equal((await refusal(TestClient.connect(url))).status, 503);
      second.send(JSON.stringify({ type: 'subscribeAll', pad: 'x'.repeat(2000) }));
      assert.equal((await second.closed).code, CloseCode.MESSAGE_TOO_BIG);
      await client.close();
    } finally {
      await app.close();
    }
  });

  test('the postgres group reaches the PostgreSQL bus', async () => {
    const db = await createTestDatabase();
    const app = Fastify();
    try {
      await app.register(meshSubscriptions, {
        authenticate: async () => null,
        sql: db.sql,
        postgres: { retentionPerTask: 3, pruneIntervalMs: 20 },
      });
      await app.ready();
      const [task] = await db.sql<{ id: string }[]>`INSERT INTO tasks (owner_id, name) VALUES (NULL, 'grouped') RETURNING id::text AS id`;
      for (let version = 1; version <= 10; version++) {
        await app.mesh.taskUpdates.publish({ taskId: task!.id, version, status: 's', updatedFields: [], updatedBy: 'test' });
      }
      const kept = async () =>
        (await db.sql<{ n: number }[]>`SELECT count(*)::int AS n FROM mesh_event_log WHERE task_id = ${task!.id}`)[0]!.n;
      const deadline = Date.now() + 10_000;
      while ((await kept()) > 3 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
      assert.equal(await kept(), 3);
    } finally {
      await app.close();
      await db.drop();
    }
  });
});

test('directSql: defaults to sql, must be a postgres client, and needs sql', () => {
  const sql = (() => {}) as unknown as Sql<any>;
  const direct = (() => {}) as unknown as Sql<any>;
  assert.equal(resolveOptions({ authenticate: async () => null, sql }).directSql, sql);
  assert.equal(resolveOptions({ authenticate: async () => null, sql, directSql: direct }).directSql, direct);
  assert.throws(
    () => resolveOptions({ authenticate: async () => null, sql, directSql: 'postgres://x' as never }),
    /option "directSql" must be a client from the `postgres` package/,
  );
  assert.throws(
    () => resolveOptions({ authenticate: async () => null, resolveOwners: async () => new Map(), directSql: direct }),
    /option "directSql" needs "sql"/,
  );
});
