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
 * 3. A connection terminated while it fetches array types (the first thing each new connection
 *    does, so: right after a restart): unpatched, the old backend's error stays pending, fails the
 *    first query of the next connection, and escapes as an unhandled rejection, which also ends
 *    the process (porsager/postgres#1192, #1223). The example server died of this one too.
 */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, before, test } from 'node:test';
import postgres, { type Options } from 'postgres';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';

let db: TestDatabase;
const uncaught: unknown[] = [];
const onUncaught = (error: unknown) => uncaught.push(error);

before(async () => {
  db = await createTestDatabase();
  // Caught here, so that an unpatched driver fails the assertions below rather than the process.
  process.on('uncaughtException', onUncaught);
  process.on('unhandledRejection', onUncaught);
});
after(async () => {
  process.removeListener('uncaughtException', onUncaught);
  process.removeListener('unhandledRejection', onUncaught);
  await db.drop();
});

/**
 * A client of one connection on sockets of our own (connected, as the driver expects), each handed
 * to `onSocket` first, so that a test can cut or doctor it.
 */
function clientOnOwnSockets(onSocket: (socket: Socket) => void) {
  const { hostname, port } = new URL(db.url);
  return postgres(db.url, {
    max: 1,
    connect_timeout: 5,
    onnotice: () => {},
    socket: () =>
      new Promise<Socket>((resolve, reject) => {
        const socket = connect(Number(port), hostname, () => resolve(socket)).once('error', reject);
        onSocket(socket);
      }),
  } as Options<any>);
}

/** Resolves after the check phase of this loop turn, where the driver's deferred writes run. */
const afterImmediates = () => new Promise((resolve) => setImmediate(() => setImmediate(resolve)));

test('a transaction whose connection drops mid-query rejects with CONNECTION_CLOSED; the process and the pool carry on', async () => {
  const sql = postgres(db.url, { max: 2, connect_timeout: 5, onnotice: () => {} });
  let pid = 0;
  const transaction = sql.begin(async (tx) => {
    const [row] = await tx<{ pid: number }[]>`SELECT pg_backend_pid() AS pid`;
    pid = row!.pid;
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
  const sql = clientOnOwnSockets((socket) => sockets.push(socket));
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

/** The ErrorResponse a backend sends when it is terminated (pg_terminate_backend, a fast shutdown). */
function adminShutdown(): Buffer {
  const fields = Buffer.from('SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0');
  const head = Buffer.alloc(5);
  head.write('E');
  head.writeInt32BE(fields.length + 4, 1);
  return Buffer.concat([head, fields]);
}

test('a connection terminated while it fetches array types: no unhandled rejection, and the next connection answers', async () => {
  let terminated = false;
  // The first connection's backend "is terminated" the moment the driver asks for the array
  // types: it answers 57P01 and closes, as a real one does. Later connections are left alone.
  const sql = clientOnOwnSockets((socket) => {
    if (terminated) return;
    const write = socket.write.bind(socket) as (chunk: Buffer, cb?: () => void) => boolean;
    socket.write = ((chunk: Buffer, cb?: () => void) => {
      if (terminated || !Buffer.from(chunk).includes('typarray')) return write(chunk, cb);
      terminated = true;
      setImmediate(() => {
        socket.emit('data', adminShutdown());
        socket.destroy();
      });
      return true;
    }) as typeof socket.write;
  });
  assert.deepEqual([...(await sql`SELECT 1 AS one`)], [{ one: 1 }]);
  assert.ok(terminated, 'the types query was cut');
  await afterImmediates();
  assert.deepEqual(uncaught.splice(0).map(String), []);
  await sql.end({ timeout: 1 });
});
