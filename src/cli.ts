#!/usr/bin/env node
/**
 * `npx mesh-subscriptions migrate`: the PostgreSQL bus's migration for a team that runs its own
 * (a DBA, a migration tool). `--print` writes the SQL to stdout; without it the migration runs
 * against `--database-url` or `DATABASE_URL`. The flags mirror the plugin's options, so that the
 * objects match what the plugin checks at start.
 */
import { parseArgs } from 'node:util';
import postgres from 'postgres';
import { migrate } from './bus/postgres/migration.js';
import { migrationSql, SCHEMA_VERSION, type MigrationOptions } from './bus/postgres/schema.js';

const USAGE = `Usage: mesh-subscriptions migrate [--print] [options]

Creates the plugin's tables and functions, or brings them to schema version ${SCHEMA_VERSION}.

  --print                    write the SQL to stdout instead of running it (pipe it into psql)
  --database-url <url>       where to run it (default: $DATABASE_URL); connect directly, not through a pooler
  --schema <name>            the plugin's schema (option postgres.schema; default public)
  --tasks-table <name>       the tasks table the SQL functions read owners from (option tasks.table; default tasks)
  --tasks-id-column <name>   its id column (option tasks.idColumn; default id)
  --tasks-owner-column <n>   its owner column (option tasks.ownerColumn; default owner_id)
  --resolve-owners           the plugin is given resolveOwners: the functions read no tasks table
  --tickets                  also the tickets table (option tickets.enabled)
  --grant-to <role>          grant that role what the plugin needs on the objects
  --help                     this text
`;

function fail(message: string): never {
  process.stderr.write(`mesh-subscriptions: ${message}\n\n${USAGE}`);
  process.exit(2);
}

async function main(argv: string[]): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        print: { type: 'boolean' },
        'database-url': { type: 'string' },
        schema: { type: 'string' },
        'tasks-table': { type: 'string' },
        'tasks-id-column': { type: 'string' },
        'tasks-owner-column': { type: 'string' },
        'resolve-owners': { type: 'boolean' },
        tickets: { type: 'boolean' },
        'grant-to': { type: 'string' },
        help: { type: 'boolean' },
      },
    });
  } catch (error) {
    fail((error as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  if (positionals.length !== 1 || positionals[0] !== 'migrate') fail(`unknown command: ${positionals.join(' ') || '(none)'}`);
  const tasksFlags = values['tasks-table'] ?? values['tasks-id-column'] ?? values['tasks-owner-column'];
  if (values['resolve-owners'] && tasksFlags !== undefined) fail('--resolve-owners leaves no tasks table to name');
  const options: MigrationOptions = {
    schema: values.schema,
    tasks: values['resolve-owners']
      ? null
      : { table: values['tasks-table'], idColumn: values['tasks-id-column'], ownerColumn: values['tasks-owner-column'] },
    tickets: values.tickets ?? false,
    grantTo: values['grant-to'],
  };
  let text: string;
  try {
    text = migrationSql(options);
  } catch (error) {
    fail((error as Error).message);
  }
  if (values.print) {
    // One transaction: a DBA's psql applies all of it or nothing.
    process.stdout.write(`BEGIN;\n${text}COMMIT;\n`);
    return;
  }
  const url = values['database-url'] ?? process.env.DATABASE_URL;
  if (!url) fail('give --print, or a database: --database-url or DATABASE_URL');
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    await migrate(sql, options);
    process.stdout.write(`migrated schema ${options.schema ?? 'public'} to version ${SCHEMA_VERSION}\n`);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

main(process.argv.slice(2)).catch((error: unknown) => {
  // The driver's message, never the URL (it may hold a password).
  process.stderr.write(`mesh-subscriptions: migrate failed: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
