/**
 * The patch this project carries for the `postgres` driver (patches/, README "The driver patch"):
 * what a connection that goes away at the wrong moment must no longer do. Both cases are forced
 * here, not raced for, so they fail every time on an unpatched driver.
 *
 * 1. A transaction whose connection drops mid-query: sql.begin sends ROLLBACK on the dead
 *    connection; unpatched, that write runs from a setImmediate on a null socket and throws
 *    `TypeError: Cannot read properties of null (reading 'write')` where no caller can catch it,
 *    ending the process (porsager/postgres#1066, #1154). This is how a PostgreSQL restart took an
 *    example server down while it created or changed tasks.
 * 2. A connection closed while a small write waits for its setImmediate: unpatched, the cleared
 *    timer is never forgotten, so when the pool reconnects that connection its startup message is
 *    held back forever and every query on it waits for `connect_timeout`.
 */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, before, test } from 'node:test';
import postgres, { type Options } from 'postgres';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';

let db: TestDatabase;
const uncaught: Error[] = [];
const onUncaught = (error: Error) => uncaught.push(error);

before(async () => {
  db = await createTestDatabase();
  // Caught here, so that an unpatched driver fails the assertions below rather than the process.
  process.on('uncaughtException', onUncaught);
});
after(async () => {
  process.removeListener('uncaughtException', onUncaught);
  await db.drop();
});

/** Resolves after the check phase of this loop turn, where the driver's deferred writes run. */
const afterImmediates = () => new Promise((resolve) => setImmediate(() => setImmediate(resolve)));

test('a transaction whose connection drops mid-query rejects with CONNECTION_CLOSED; the process and the pool carry on', async () => {
  const sql = postgres(db.url, { max: 2, connect_timeout: 5, onnotice: () => {} });
  let pid = 0;
  const transaction = sql.begin(async (tx) => {
    [{ pid }] = await tx<{ pid: number }[]>`SELECT pg_backend_pid() AS pid`;
    // Ends when its backend is terminated, below.
    await tx`SELECT pg_sleep(60)`;
  });
  const failed = assert.rejects(transaction, { code: 'CONNECTION_CLOSED' });
  while (pid === 0) await afterImmediates();
  await db.sql`SELECT pg_terminate_backend(${pid})`;
  await failed;
  // The ROLLBACK sql.begin sends after the failure was written (or not) by now.
  await afterImmediates();
  assert.deepEqual(uncaught.splice(0).map(String), []);
  assert.deepEqual([...(await sql`SELECT 1 AS one`)], [{ one: 1 }]);
  await sql.end({ timeout: 1 });
});

test('a connection closed while a small write waits for its turn reconnects and answers', async () => {
  const sockets: Socket[] = [];
  const { hostname, port } = new URL(db.url);
  const sql = postgres(db.url, {
    max: 1,
    connect_timeout: 5,
    onnotice: () => {},
    // A socket of our own (connected, as the driver expects), so that the test can cut it.
    socket: () =>
      new Promise<Socket>((resolve, reject) => {
        const socket = connect(Number(port), hostname, () => resolve(socket)).once('error', reject);
        sockets.push(socket);
      }),
  } as Options<any>);
  await sql`SELECT 1`;
  // Queried and cut in the check phase of one loop turn: the query's write waits for the next
  // turn's check phase, and the socket's close comes first, in this turn's close phase.
  const cut = await new Promise<Promise<void>>((resolve) =>
    setImmediate(async () => {
      const failed = assert.rejects(sql`SELECT 2`.execute(), { code: 'CONNECTION_CLOSED' });
      // The driver hands the query to the connection a microtask later.
      await Promise.resolve();
      await Promise.resolve();
      sockets.at(-1)!.destroy();
      resolve(failed);
    }),
  );
  await cut;
  assert.deepEqual([...(await sql`SELECT 3 AS three`)], [{ three: 3 }]);
  assert.equal(sockets.length, 2, 'one reconnection');
  assert.deepEqual(uncaught.splice(0).map(String), []);
  await sql.end({ timeout: 1 });
});
