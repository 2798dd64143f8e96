/**
 * `npm run keys -- create --owner <uuid>` | `create --admin` | `revoke <key>`: manage the example
 * server's API keys. A new key is printed once and stored only as its hash.
 */
import { parseArgs } from 'node:util';
import pino from 'pino';
import { createApiKey, revokeApiKey } from './api-keys.js';
import { readConfig } from './config.js';
import { openDatabase } from './database.js';
import { loadEnvFile } from './env-file.js';
import { migrate } from './migrations.js';

const USAGE = `usage:
  npm run keys -- create --owner <uuid>   a key that sees the tasks of one owner
  npm run keys -- create --admin          a key that sees every task
  npm run keys -- revoke <key>            refuse a key from now on`;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function fail(message: string): never {
  process.stderr.write(`${message}\n${USAGE}\n`);
  process.exit(2);
}

const { values, positionals } = parseArgs({
  options: { owner: { type: 'string' }, admin: { type: 'boolean', default: false } },
  allowPositionals: true,
  strict: true,
});
const [command, argument] = positionals;
if (command === 'create') {
  if (values.owner !== undefined && !UUID.test(values.owner)) fail('--owner must be a UUID');
  if (values.owner === undefined && !values.admin) fail('create needs --owner <uuid> or --admin');
} else if (command === 'revoke') {
  if (!argument) fail('revoke needs the key');
} else {
  fail(command ? `unknown command ${command}` : 'no command');
}

// The server's .env too: a DATABASE_URL there is where the keys must go.
loadEnvFile();
const config = readConfig();
const db = await openDatabase(config, pino({ level: process.env.LOG_LEVEL || 'warn' }, pino.destination(2)));
try {
  await migrate(db.sql);
  if (command === 'create') {
    const key = await createApiKey(db.sql, { ownerId: values.owner?.toLowerCase() ?? null, admin: values.admin });
    process.stdout.write(`${key}\n`);
  } else {
    const revoked = await revokeApiKey(db.sql, argument!);
    process.stdout.write(revoked ? 'revoked\n' : 'no such active key\n');
    process.exitCode = revoked ? 0 : 1;
  }
} finally {
  await db.close();
}
