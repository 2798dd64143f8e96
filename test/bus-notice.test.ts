/**
 * Notices (src/bus/postgres/notice.ts): a NOTIFY that carries its statement's rows, which a
 * reader standing right before them hands on without reading the log. Two buses on one database
 * (A publishes, B delivers), B's client counted, B's periodic read pushed out of the way so that
 * every read B makes is one a wake-up asked for. Whatever way the rows take, B delivers every
 * event once, in log order, with the cursor its publish resolved with; a notice that is not
 * signed with the log's key is never delivered from.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import postgres, { type Sql } from 'postgres';
import type { BusEntry, LoggedEvent } from '../src/bus/bus.js';
import { PostgresBus } from '../src/bus/postgres.js';
import { DEFAULTS } from '../src/options.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';

let db: TestDatabase;
let a: PostgresBus;
let b: PostgresBus;
let bClient: Sql<any>;
/** Statements B has issued through its client since the last reset. */
let bQueries = 0;
const delivered: LoggedEvent[] = [];
let waiting: { count: number; resolve: () => void } | undefined;

const busOn = (sql: Sql<any>, notifyRows = true) =>
  new PostgresBus(
    sql,
    // No periodic read: every read B makes is one a wake-up asked for.
    { ...DEFAULTS.postgres, tasks: DEFAULTS.tasks, tickets: false, pollIntervalMs: 3_600_000, notifyRows },
    pino({ level: 'silent' }),
  );

before(async () => {
  db = await createTestDatabase();
  a = busOn(db.sql);
  await a.start(async () => {});
  bClient = postgres(db.url, { max: 4, onnotice: () => {} });
  const counted = new Proxy(bClient, {
    apply(target, self, args) {
      bQueries++;
      return Reflect.apply(target, self, args);
    },
  });
  b = busOn(counted);
  await b.start(async (events) => {
    delivered.push(...events);
    if (waiting && delivered.length >= waiting.count) waiting.resolve();
  });
});
after(async () => {
  await a.stop();
  await b.stop();
  await bClient.end({ timeout: 1 });
  await db.drop();
});

/** Resolves once B has delivered `count` events in all. */
function deliveredCount(count: number): Promise<void> {
  if (delivered.length >= count) return Promise.resolve();
  return new Promise((resolve) => (waiting = { count, resolve }));
}

const update = (taskId: string, version: number): BusEntry => ({
  kind: 'update',
  event: { taskId, ownerId: randomUUID(), version, status: 'running', updatedFields: ['status'], updatedBy: 'test' },
});

const versionsOf = (events: LoggedEvent[]) => events.map((e) => (e.kind === 'update' ? e.event.version : NaN));

/** What B delivered since `start`: versions 1, 2, … with the cursors their publishes resolved with, in order. */
function inOrder(start: number, cursors: string[]): LoggedEvent[] {
  const got = delivered.slice(start);
  assert.deepEqual(
    versionsOf(got),
    cursors.map((_, i) => i + 1),
  );
  assert.deepEqual(
    got.map((e) => e.cursor),
    cursors,
  );
  return got;
}

describe('notices', () => {
  test('an event reaches B from its notice, with no read of the log, with its cursor', async () => {
    const taskId = randomUUID();
    const start = delivered.length;
    const cursors: string[] = [];
    // A transaction running anywhere on the cluster (another test's) makes a statement send a
    // bare wake-up instead, so some publish of a few must go without one.
    let unread = false;
    for (let version = 1; version <= 20 && !unread; version++) {
      bQueries = 0;
      cursors.push(await a.publish(update(taskId, version)));
      await deliveredCount(start + version);
      unread = bQueries === 0;
    }
    assert.ok(unread, 'no event reached B without a read');
    const got = inOrder(start, cursors);
    assert.ok(got.every((e) => e.kind === 'update' && e.event.taskId === taskId && e.publishedAt !== undefined));
  });

  test('a burst in one statement arrives whole and in order, from a notice or, past its size, from a read', async () => {
    const taskId = randomUUID();
    for (const size of [10, 300]) {
      const start = delivered.length;
      bQueries = 0;
      const cursors = await Promise.all(Array.from({ length: size }, (_, i) => a.publish(update(taskId, i + 1))));
      await deliveredCount(start + size);
      inOrder(start, cursors);
      // 300 events cannot ride in one NOTIFY (under 8000 bytes): B had to read them.
      if (size === 300) assert.ok(bQueries > 0);
    }
  });

  test('a notice that does not start at B’s position is a wake-up: B reads, and misses nothing in between', async () => {
    const taskId = randomUUID();
    const start = delivered.length;
    // Logged straight into the table, with no NOTIFY: B does not know of it.
    await db.sql`
      INSERT INTO mesh_event_log (kind, task_id, owner_id, owner_given, payload)
      VALUES ('update', ${taskId}::uuid, NULL, true, '{"version":1,"status":"running","updatedFields":[],"updatedBy":"sql"}'::json)`;
    bQueries = 0;
    const cursor = await a.publish(update(taskId, 2));
    await deliveredCount(start + 2);
    assert.deepEqual(versionsOf(delivered.slice(start)), [1, 2]);
    assert.equal(delivered.at(-1)!.cursor, cursor);
    assert.ok(bQueries > 0, 'B read the log');
  });

  test('events published in a caller’s transaction arrive in order; a rolled-back one never', async () => {
    const taskId = randomUUID();
    const start = delivered.length;
    await db.sql
      .begin(async (tx) => {
        await a.publish(update(taskId, 0), tx);
        throw new Error('rolled back');
      })
      .catch(() => {});
    const cursors: string[] = [];
    await db.sql.begin(async (tx) => {
      cursors.push(await a.publish(update(taskId, 1), tx));
      cursors.push(await a.publish(update(taskId, 2), tx));
    });
    cursors.push(await a.publish(update(taskId, 3)));
    await deliveredCount(start + 3);
    inOrder(start, cursors);
  });

  test('a NOTIFY forged by anyone who may connect delivers nothing: unsigned, or signed with another key', async () => {
    const taskId = randomUUID();
    const start = delivered.length;
    // Where B stands, as a forger who read a cursor would name it: the notice fits but for its signature.
    const [, txid, id] = b.head().split('.');
    const body = JSON.stringify({
      txid: String(BigInt(txid!) + 1n),
      prev: [txid, id],
      rows: [
        [String(BigInt(id!) + 1n), 'update', taskId, null, true, { version: 99, status: 'running', updatedFields: [], updatedBy: 'x' }, 0],
      ],
    });
    const { createHmac } = await import('node:crypto');
    const otherKey = createHmac('sha256', 'not the key').update(body).digest('hex');
    const forger = postgres(db.url, { max: 1, onnotice: () => {} });
    try {
      for (const payload of [`${'0'.repeat(64)}${body}`, `${otherKey}${body}`, body]) {
        await forger`SELECT pg_notify('mesh_event_log', ${payload})`;
      }
    } finally {
      await forger.end({ timeout: 1 });
    }
    const cursor = await a.publish(update(taskId, 1));
    await deliveredCount(start + 1);
    assert.deepEqual(versionsOf(delivered.slice(start)), [1]);
    assert.equal(delivered.at(-1)!.cursor, cursor);
  });

  test('content PostgreSQL refuses as text (NUL) and 60-deep JSON come from a notice as they were published', async () => {
    // (A lone surrogate never gets this far: publish refuses it.)
    const content = 'nul \u0000, quote ", line \u2028, backslash \\';
    let toolInput: unknown = 'leaf \u0000';
    for (let depth = 0; depth < 60; depth++) toolInput = { down: toolInput };
    const event = {
      taskId: randomUUID(),
      ownerId: randomUUID(),
      messageType: 'tool_use',
      content,
      toolName: 'x',
      toolInput,
      isError: false,
      costUsd: 0.5,
      durationMs: 3,
      isPartial: false,
    };
    // As in the first test: a transaction running elsewhere makes a statement send a bare wake-up.
    let fromNotice = false;
    for (let attempt = 0; attempt < 20 && !fromNotice; attempt++) {
      const start = delivered.length;
      bQueries = 0;
      const cursor = await a.publish({ kind: 'output', event });
      await deliveredCount(start + 1);
      fromNotice = bQueries === 0;
      const got = delivered.at(-1)!;
      assert.equal(got.cursor, cursor);
      assert.equal(got.kind, 'output');
      assert.deepEqual(got.event, event);
    }
    assert.ok(fromNotice, 'no attempt reached B without a read');
  });

  test('by default a NOTIFY carries nothing: a role that may only connect and LISTEN reads no event', async () => {
    const plain = busOn(db.sql, false);
    await plain.start(async () => {});
    const eavesdropper = postgres(db.url, { max: 1, onnotice: () => {} });
    const heard: string[] = [];
    let hear!: () => void;
    const heardOne = new Promise<void>((resolve) => (hear = resolve));
    try {
      await eavesdropper.listen('mesh_event_log', (payload) => {
        heard.push(payload);
        hear();
      });
      const start = delivered.length;
      await plain.publish(update(randomUUID(), 1));
      await heardOne;
      // B still gets it, by reading the log.
      await deliveredCount(start + 1);
      assert.deepEqual(heard, ['']);
    } finally {
      await eavesdropper.end({ timeout: 1 });
      await plain.stop();
    }
  });
});
