/**
 * Task owners read from the host's tasks table, through the host's `postgres` client; and the
 * check at start that the table and the columns the options name are there, of usable types and
 * readable — a mistake there would otherwise look like an outage (every subscribe `UNAVAILABLE`).
 */
import type { Sql } from 'postgres';
import { within } from '../../core/deadline.js';
import type { OwnerResolver } from '../../core/ports.js';
import { MeshSchemaError } from '../../errors.js';
import type { TasksOptions } from '../../options.js';
import { quoteIdentifier, quoteTable } from './schema.js';

export function sqlOwnerResolver(sql: Sql<any>, tasks: TasksOptions): OwnerResolver {
  // Quoted here rather than by sql(name): a host's column transform must not rename the host's own columns.
  const table = sql.unsafe(quoteTable(tasks.table));
  const id = sql.unsafe(quoteIdentifier(tasks.idColumn));
  const owner = sql.unsafe(quoteIdentifier(tasks.ownerColumn));
  return async (taskIds) => {
    const rows = await sql<{ id: string; owner_id: string | null }[]>`
      SELECT ${id}::text AS id, ${owner}::text AS owner_id FROM ${table} WHERE ${id} = ANY(${taskIds as string[]}::uuid[])`;
    return new Map(rows.map((row) => [row.id, row.owner_id]));
  };
}

/** Types an owner column may have: the lookups and the SQL functions cast it to uuid. */
const OWNER_TYPES: ReadonlySet<string> = new Set(['uuid', 'text', 'character varying']);
const ID_TYPES: ReadonlySet<string> = new Set(['uuid']);

/** The catalog's answer about the tasks table, for the check. */
interface Table {
  oid: string | null;
  name: string;
  role: string;
  search_path: string;
}
interface Found {
  table: Table | undefined;
  columns: { name: string; type: string; readable: boolean }[];
}

async function lookUp(sql: Sql<any>, tasks: TasksOptions): Promise<Found> {
  const [table] = await sql<Table[]>`
    SELECT c.oid::text AS oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name,
           current_user::text AS role, current_setting('search_path') AS search_path
    FROM (SELECT to_regclass(${quoteTable(tasks.table)}) AS oid) AS r
    LEFT JOIN pg_class c ON c.oid = r.oid LEFT JOIN pg_namespace n ON n.oid = c.relnamespace`;
  if (!table || table.oid === null) return { table, columns: [] };
  const columns = await sql<Found['columns']>`
    SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS type, has_column_privilege(a.attrelid, a.attnum, 'SELECT') AS readable
    FROM pg_attribute a WHERE a.attrelid = ${table.oid}::oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`;
  // The lookup itself, on no ids: what the catalog does not show (row security, a view that fails) shows here.
  const usable = (name: string, types: ReadonlySet<string>) => columns.some((c) => c.name === name && types.has(c.type) && c.readable);
  if (usable(tasks.idColumn, ID_TYPES) && usable(tasks.ownerColumn, OWNER_TYPES)) {
    await sqlOwnerResolver(sql, tasks)([]);
  }
  return { table, columns };
}

/** An error the server answered with (SQLSTATE), as opposed to a connection that failed or never answered. */
const fromServer = (error: unknown): boolean => error instanceof Error && error.name === 'PostgresError';

export interface TasksCheckOptions {
  /** How long the database may take to answer (`owners.lookupTimeoutMs`). */
  timeoutMs: number;
  /** The database could not be asked: an outage, not a configuration mistake; lookups answer UNAVAILABLE until it is back. */
  onUnreachable: (error: unknown) => void;
}

/**
 * Checks that `tasks.table` exists with `tasks.idColumn` (uuid) and `tasks.ownerColumn` (uuid, or
 * text holding one), readable by the connecting role; throws a MeshSchemaError naming the table
 * and the columns otherwise. A database that cannot be asked is told to `onUnreachable`, not
 * thrown: it is an outage, which the lookups already answer (`UNAVAILABLE`).
 */
export async function checkTasksTable(sql: Sql<any>, tasks: TasksOptions, options: TasksCheckOptions): Promise<void> {
  const fail = (message: string, cause?: unknown): never => {
    throw new MeshSchemaError(`the tasks table does not match the options: ${message}`, { cause });
  };
  let found: Found;
  try {
    found = await within(lookUp(sql, tasks), options.timeoutMs, `no answer within ${options.timeoutMs} ms`);
  } catch (error) {
    if (!fromServer(error)) return options.onUnreachable(error);
    // A schema the role may not use (to_regclass raises), a failing view or row security policy.
    return fail(`option "tasks.table" names "${tasks.table}", which cannot be read: ${(error as Error).message}`, error);
  }
  const { table, columns } = found;
  if (!table || table.oid === null) {
    return fail(
      `option "tasks.table" names "${tasks.table}", and there is no such table` +
        (tasks.table.includes('.') ? '' : ` in the search_path of role "${table?.role}" (${table?.search_path})`),
    );
  }
  const its = `its columns: ${columns.map((c) => `${c.name} ${c.type}`).join(', ')}`;
  const wanted = [
    { option: 'tasks.idColumn', name: tasks.idColumn, types: ID_TYPES, typeText: 'uuid' },
    { option: 'tasks.ownerColumn', name: tasks.ownerColumn, types: OWNER_TYPES, typeText: 'uuid (or text holding one)' },
  ];
  for (const want of wanted) {
    const column = columns.find((c) => c.name === want.name);
    if (!column) fail(`option "${want.option}" names column "${want.name}", which table ${table.name} does not have (${its})`);
    else if (!want.types.has(column.type)) {
      fail(`option "${want.option}" names column ${table.name}.${want.name}, of type ${column.type}; it must be ${want.typeText}`);
    } else if (!column.readable) {
      fail(
        `role "${table.role}" may not read column ${table.name}.${want.name} (option "${want.option}"): ` +
          `GRANT SELECT (${quoteIdentifier(tasks.idColumn)}, ${quoteIdentifier(tasks.ownerColumn)}) ON ${table.name} TO ${quoteIdentifier(table.role)}`,
      );
    }
  }
}
