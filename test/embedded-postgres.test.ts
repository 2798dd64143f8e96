/**
 * The example server's embedded PostgreSQL: a port of its own, never another server's, and a
 * second process of ours attaching to the running one instead of starting another.
 */
import assert from 'node:assert/strict';
import { copyFile, mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import pino from 'pino';
import postgres from 'postgres';
import { scratchDirectory, startEmbeddedPostgres, type EmbeddedDatabase } from '../src/server/embedded-postgres.js';

const log = pino({ level: 'silent' });
let scratch: string;
let first: EmbeddedDatabase;

before(async () => {
  scratch = await scratchDirectory('embedded-test');
  first = await startEmbeddedPostgres({ dir: path.join(scratch, 'a'), log });
});
after(async () => {
  await first?.stop();
  await rm(scratch, { recursive: true, force: true });
});

test('it listens on 127.0.0.1 on a port of its own, not PostgreSQL’s usual 5432', async () => {
  const url = new URL(first.url);
  assert.equal(url.hostname, '127.0.0.1');
  assert.notEqual(url.port, '5432');
  const sql = postgres(first.url, { max: 1 });
  const [row] = await sql<{ dir: string }[]>`SELECT current_setting('data_directory') AS dir`;
  assert.equal(row!.dir, path.join(scratch, 'a', 'pg'));
  await sql.end();
});

test('a second start on the same directory attaches to the running server and leaves it running', async () => {
  const second = await startEmbeddedPostgres({ dir: path.join(scratch, 'a'), log });
  assert.equal(second.url, first.url);
  await second.stop();
  const sql = postgres(first.url, { max: 1 });
  assert.deepEqual([...(await sql`SELECT 1 AS one`)], [{ one: 1 }]);
  await sql.end();
});

test('a server on the recorded port that is not ours is refused, not used', async () => {
  // Directory b claims, through a postmaster.pid of a live process, the port of a's server, and
  // holds a's password: everything would work except that the data directory is not b's.
  const b = path.join(scratch, 'b');
  await mkdir(path.join(b, 'pg'), { recursive: true });
  await copyFile(path.join(scratch, 'a', 'embedded-pg.json'), path.join(b, 'embedded-pg.json'));
  const port = new URL(first.url).port;
  await writeFile(path.join(b, 'pg', 'postmaster.pid'), `${process.pid}\n${b}\n0\n${port}\n`);
  await assert.rejects(startEmbeddedPostgres({ dir: b, log }), /serves .*\/a\/pg, not .*\/b\/pg/);
});
