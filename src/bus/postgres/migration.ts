/**
 * Running the migration (schema.ts), and what the plugin does at start: look first (catalog reads
 * only), and migrate only when something is missing or older — so that a role that may not
 * create anything starts when a DBA already migrated; when it cannot, say what is missing and
 * the command that creates it.
 */
import type { Sql } from 'postgres';
import { MeshSchemaError } from '../../errors.js';
import {
  FUNCTIONS,
  SCHEMA_VERSION,
  TABLES,
  migrationSql,
  ownersFrom,
  qualified,
  quoteIdentifier,
  resolveMigration,
  type MigrationOptions,
  type ResolvedMigration,
} from './schema.js';

const MIGRATION_LOCK = 0x6d657368_6c6f67n; // "meshlog"

/**
 * Creates the plugin's objects or brings them to SCHEMA_VERSION, in one transaction under an
 * advisory lock (instances starting together do not race). Give it a client connected directly,
 * not through a transaction-mode pooler, and a role that may create in the schema.
 */
export async function migrate(sql: Sql<any>, options: MigrationOptions = {}): Promise<void> {
  const text = migrationSql(options);
  await sql.begin(async (tx) => {
    await tx`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK.toString()}::bigint)`;
    await tx.unsafe(text);
  });
}

/** What the database holds of the plugin's objects, as seen by the connecting role. */
export interface SchemaState {
  role: string;
  /** Objects absent, named for people: `table "mesh"."mesh_event_log"`. */
  missing: string[];
  /** The stamped version (1: objects from before versions); undefined when there is none the role can read. */
  version: number | undefined;
  /** The owner settlement the functions were made with (see `ownersFrom`), if read. */
  ownersFrom: string | undefined;
  /** Privileges the role lacks on objects that exist: `INSERT on "mesh"."mesh_event_log"`. */
  lacking: string[];
}

/** Catalog reads only: works for any role, changes nothing. */
export async function inspectSchema(sql: Sql<any>, options: MigrationOptions = {}): Promise<SchemaState> {
  const m = resolveMigration(options);
  const [head] = await sql<{ role: string; nsp: string | null; usage: boolean }[]>`
    SELECT current_user::text AS role, n.oid::text AS nsp,
           CASE WHEN n.oid IS NULL THEN false ELSE has_schema_privilege(n.oid, 'USAGE') END AS usage
    FROM (SELECT 1) AS one LEFT JOIN pg_namespace n ON n.nspname = ${m.schema}`;
  const state: SchemaState = { role: head!.role, missing: [], version: undefined, ownersFrom: undefined, lacking: [] };
  const schema = quoteIdentifier(m.schema);
  if (head!.nsp === null) {
    state.missing.push(`schema ${schema}`);
    return state;
  }
  if (!head!.usage) state.lacking.push(`USAGE on schema ${schema}`);
  const tables = TABLES.filter((t) => !t.tickets || m.tickets);
  const tableRows = await sql<{ name: string; exists: boolean; lacking: string[] }[]>`
    SELECT w.name, c.oid IS NOT NULL AS exists,
           ARRAY(SELECT p FROM unnest(w.privileges) AS p WHERE c.oid IS NOT NULL AND NOT has_table_privilege(c.oid, p)) AS lacking
    FROM jsonb_to_recordset(${sql.json(tables as never)}::jsonb) AS w(name text, privileges text[])
    LEFT JOIN pg_class c ON c.relname = w.name AND c.relnamespace = ${head!.nsp}::oid AND c.relkind = 'r'`;
  for (const row of tableRows) {
    if (!row.exists) state.missing.push(`table ${qualified(m.schema, row.name)}`);
    for (const privilege of row.lacking) state.lacking.push(`${privilege} on ${qualified(m.schema, row.name)}`);
  }
  const functionRows = await sql<{ name: string; args: string; exists: boolean; executable: boolean }[]>`
    SELECT w.name, w.args, p.oid IS NOT NULL AS exists, coalesce(has_function_privilege(p.oid, 'EXECUTE'), false) AS executable
    FROM jsonb_to_recordset(${sql.json(FUNCTIONS as never)}::jsonb) AS w(name text, args text)
    LEFT JOIN pg_proc p ON p.proname = w.name AND p.pronamespace = ${head!.nsp}::oid AND oidvectortypes(p.proargtypes) = w.args`;
  for (const row of functionRows) {
    const name = `${schema}.${row.name}(${row.args})`;
    if (!row.exists) state.missing.push(`function ${name}`);
    else if (!row.executable) state.lacking.push(`EXECUTE on function ${name}`);
  }
  const meta = tableRows.find((row) => row.name === 'mesh_event_log_meta');
  if (head!.usage && meta?.exists && !meta.lacking.includes('SELECT')) {
    // As JSON: objects from before versions have no version column to name.
    const [row] = await sql<{ meta: { schema_version?: number; owners_from?: string } }[]>`
      SELECT to_jsonb(m) AS meta FROM ${sql.unsafe(qualified(m.schema, 'mesh_event_log_meta'))} AS m`;
    if (row) {
      state.version = row.meta.schema_version ?? 1;
      state.ownersFrom = row.meta.owners_from ?? undefined;
    }
  }
  return state;
}

/** The CLI command that prints the migration for these options (to pipe into psql). */
export function migrateCommand(options: MigrationOptions = {}, grantTo?: string): string {
  const m = resolveMigration(options);
  const flags = ['npx mesh-subscriptions migrate --print'];
  if (m.schema !== 'public') flags.push(`--schema ${m.schema}`);
  if (m.tasks === null) flags.push('--resolve-owners');
  else {
    if (m.tasks.table !== 'tasks') flags.push(`--tasks-table ${m.tasks.table}`);
    if (m.tasks.idColumn !== 'id') flags.push(`--tasks-id-column ${m.tasks.idColumn}`);
    if (m.tasks.ownerColumn !== 'owner_id') flags.push(`--tasks-owner-column ${m.tasks.ownerColumn}`);
  }
  if (m.tickets) flags.push('--tickets');
  if (grantTo !== undefined) flags.push(`--grant-to ${grantTo}`);
  return `${flags.join(' ')} | psql "$DATABASE_URL"`;
}

/** What must change in the objects themselves (a migration), for people; empty when nothing. */
function staleness(state: SchemaState, m: ResolvedMigration): string[] {
  const reasons: string[] = [];
  if (state.missing.length > 0) reasons.push(`missing ${state.missing.join(', ')}`);
  if (state.missing.length === 0 && state.version !== undefined && state.version < SCHEMA_VERSION) {
    reasons.push(`the objects are at schema version ${state.version}, this plugin needs ${SCHEMA_VERSION}`);
  }
  const wanted = ownersFrom(m.tasks);
  if (state.missing.length === 0 && state.version === SCHEMA_VERSION && state.ownersFrom !== undefined && state.ownersFrom !== wanted) {
    const describe = (from: string) => (from === '' ? 'nowhere (resolveOwners)' : from);
    reasons.push(
      `the SQL functions settle owners from ${describe(state.ownersFrom)}, these options from ${describe(wanted)} ` +
        '(configure every instance alike)',
    );
  }
  return reasons;
}

function lackingMessage(state: SchemaState, options: MigrationOptions): string {
  return (
    `role "${state.role}" lacks ${state.lacking.join(', ')}: have them granted ` +
    `(\`${migrateCommand(options, state.role)}\` run as the objects' owner prints the grants with the migration)`
  );
}

export interface EnsureOptions extends MigrationOptions {
  /** Whether the plugin may migrate itself (`postgres.migrate`). */
  migrate: boolean;
  /** Told when the objects are of a newer version than this plugin's: left as they are. */
  onNewer?: (version: number) => void;
}

/**
 * At start: succeeds without DDL when the objects exist at this version (or a newer one) with
 * this owner settlement and the role may use them; migrates when allowed and needed; otherwise
 * (or when the migration fails) throws a MeshSchemaError naming what is missing and the command
 * that creates it. Run on a direct client: the migration takes an advisory lock.
 */
export async function ensureSchema(sql: Sql<any>, options: EnsureOptions): Promise<void> {
  const m = resolveMigration(options);
  const state = await inspectSchema(sql, m);
  const where = `schema ${quoteIdentifier(m.schema)}`;
  if (state.missing.length === 0 && state.version !== undefined && state.version > SCHEMA_VERSION) {
    // A newer plugin migrated: never take its objects back to an older version.
    options.onNewer?.(state.version);
  } else {
    const reasons = staleness(state, m);
    if (reasons.length > 0) {
      const how =
        `create or update them with \`${migrateCommand(m)}\` (as a role that may create in ${where}), ` +
        `or with \`migrate(sql, options)\` exported by mesh-subscriptions`;
      if (!options.migrate) {
        throw new MeshSchemaError(`the database is not ready (${where}): ${reasons.join('; ')}. With postgres.migrate off, ${how}.`);
      }
      try {
        await migrate(sql, m);
      } catch (error) {
        const detail = error instanceof Error ? error.message : String(error);
        throw new MeshSchemaError(
          `the database is not ready (${where}): ${reasons.join('; ')}; migrating as role "${state.role}" failed (${detail}). ` +
            `A DBA can ${how}; the plugin then starts without migrating.`,
          { cause: error },
        );
      }
      const migrated = await inspectSchema(sql, m);
      if (migrated.lacking.length > 0) throw new MeshSchemaError(lackingMessage(migrated, m));
      return;
    }
  }
  if (state.lacking.length > 0) throw new MeshSchemaError(lackingMessage(state, m));
}
