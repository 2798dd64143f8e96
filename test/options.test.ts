/**
 * The options schema: the defaults it resolves are the documented ones, and the committed
 * README options table is what `npm run options-table` writes today.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { README_FILE, withOptionsTable } from '../scripts/options-table.js';
import { DEFAULTS, resolveOptions } from '../src/options.js';

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
    prefix: '/api/v1',
    tasksTable: 'tasks',
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
    owners: { lookupTimeoutMs: 5_000 },
    postgres: {
      migrate: true,
      publishTimeoutMs: 5_000,
      retentionMs: 24 * 60 * 60 * 1000,
      retentionPerTask: 10_000,
      pruneIntervalMs: 60_000,
      pollIntervalMs: 1_000,
      listenTimeoutMs: 10_000,
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
  assert.throws(() => resolveOptions({ ...base, maxConnections: null }), /"maxConnections" must be a positive integer or Infinity, got null/);
  assert.throws(() => resolveOptions({ ...base, maxPayload: 2 ** 53 }), /"maxPayload" must be a positive integer, got 9007199254740992/);
  assert.throws(() => resolveOptions({ ...base, migrate: null }), /"migrate" must be a boolean/);
  assert.throws(() => resolveOptions({ ...base, ownerCacheTtlMs: 0 }), /"ownerCacheTtlMs" must be a positive integer, got 0/);
  assert.equal(resolveOptions({ ...base, maxConnections: Number.POSITIVE_INFINITY, ownerCacheSize: 5 }).limits.maxConnections, Number.POSITIVE_INFINITY);
  assert.throws(() => resolveOptions({ ...base, prefix: '/' }), /"prefix" must be "" or a path like "\/api\/v1"/);
  assert.equal(resolveOptions({ ...base, prefix: '' }).prefix, '');
});
