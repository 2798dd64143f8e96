/**
 * `npm test`: runs every test/*.test.ts with Node's test runner against a real PostgreSQL —
 * DATABASE_URL when set, otherwise an embedded one started here for the run and removed after
 * (in a scratch folder under `.data/`, or under the system temp folder when the checkout is in a
 * folder the cluster's user cannot enter). Each test file creates (and drops) a database of its
 * own on that server.
 */
import { spawn } from 'node:child_process';
import { readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import pino from 'pino';
import { scratchDirectory, startEmbeddedPostgres, type EmbeddedDatabase } from '../example/src/embedded-postgres.js';

const log = pino({ level: process.env.LOG_LEVEL || 'warn' }, pino.destination(2));
const requested = process.argv.slice(2);
const files =
  requested.length > 0
    ? requested
    : (await readdir('test'))
        .filter((f) => f.endsWith('.test.ts'))
        .sort()
        .map((f) => path.join('test', f));

let embedded: EmbeddedDatabase | undefined;
let scratch: string | undefined;
let url = process.env.DATABASE_URL;
if (!url) {
  scratch = await scratchDirectory('test');
  log.info({ scratch }, 'the embedded PostgreSQL of this run');
  try {
    embedded = await startEmbeddedPostgres({ dir: scratch, log });
  } catch (error) {
    await rm(scratch, { recursive: true, force: true });
    throw error;
  }
  url = embedded.url;
}

// A test that hangs fails after two minutes with its name, instead of holding up the run.
const child = spawn(process.execPath, ['--import', 'tsx', '--test', '--test-timeout=120000', ...files], {
  stdio: 'inherit',
  env: { ...process.env, MESH_TEST_DATABASE_URL: url },
});
const code = await new Promise<number>((resolve) => {
  child.on('exit', (status, signal) => resolve(status ?? (signal ? 1 : 0)));
});

await embedded?.stop();
if (scratch) await rm(scratch, { recursive: true, force: true });
process.exit(code);
