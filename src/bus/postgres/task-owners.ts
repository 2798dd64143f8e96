/**
 * Task owners read from the host's tasks table, through the host's `postgres` client; and the
 * check at start that the table and the columns the options name are there, of usable types and
 * readable — a mistake there would otherwise look like an outage (every subscribe `UNAVAILABLE`).
 */
import type { Sql } from 'postgres';
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
const OWNER_TYPES = new Set(['uuid', 'text', 'character varying']);

/**
 * Checks that `tasks.table` exists with `tasks.idColumn` (uuid) and `tasks.ownerColumn` (uuid, or
 * text holding one), readable by the connecting role; throws a MeshSchemaError naming the table
 * and the columns otherwise.
 */
export async function checkTasksTable(sql: Sql<any>, tasks: TasksOptions): Promise<void> {
  const fail = (message: string, cause?: unknown): never => {
    throw new MeshSchemaError(`the tasks table does not match the options: ${message}`, { cause });
  };
  let found: { oid: string | null; name: string; role: string; search_path: string } | undefined;
  try {
    [found] = await sql<{ oid: string | null; name: string; role: string; search_path: string }[]>`
      SELECT c.oid::text AS oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name,
             current_user::text AS role, current_setting('search_path') AS search_path
      FROM (SELECT to_regclass(${quoteTable(tasks.table)}) AS oid) AS r
      LEFT JOIN pg_class c ON c.oid = r.oid LEFT JOIN pg_namespace n ON n.oid = c.relnamespace`;
  } catch (error) {
    // A schema the role may not use: to_regclass raises rather than answering NULL.
    fail(`option "tasks.table" names "${tasks.table}", which cannot be looked up: ${(error as Error).message}`, error);
  }
  if (!found || found.oid === null) {
    return fail(
      `option "tasks.table" names "${tasks.table}", and there is no such table` +
        (tasks.table.includes('.') ? '' : ` in the search_path of role "${found?.role}" (${found?.search_path})`),
    );
  }
  const columns = await sql<{ name: string; type: string; readable: boolean }[]>`
    SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS type, has_column_privilege(a.attrelid, a.attnum, 'SELECT') AS readable
    FROM pg_attribute a WHERE a.attrelid = ${found.oid}::oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`;
  const its = `its columns: ${columns.map((c) => `${c.name} ${c.type}`).join(', ')}`;
  const wanted = [
    { option: 'tasks.idColumn', name: tasks.idColumn, types: new Set(['uuid']), typeText: 'uuid' },
    { option: 'tasks.ownerColumn', name: tasks.ownerColumn, types: OWNER_TYPES, typeText: 'uuid (or text holding one)' },
  ];
  for (const want of wanted) {
    const column = columns.find((c) => c.name === want.name);
    if (!column) fail(`option "${want.option}" names column "${want.name}", which table ${found.name} does not have (${its})`);
    else if (!want.types.has(column.type)) {
      fail(`option "${want.option}" names column ${found.name}.${want.name}, of type ${column.type}; it must be ${want.typeText}`);
    } else if (!column.readable) {
      fail(
        `role "${found.role}" may not read column ${found.name}.${want.name} (option "${want.option}"): ` +
          `GRANT SELECT (${quoteIdentifier(tasks.idColumn)}, ${quoteIdentifier(tasks.ownerColumn)}) ON ${found.name} TO ${quoteIdentifier(found.role)}`,
      );
    }
  }
  // The lookup itself, on no ids: what the catalog does not show (row security, a view that fails) shows here.
  try {
    await sqlOwnerResolver(sql, tasks)([]);
  } catch (error) {
    fail(`an owner lookup in ${found.name} failed: ${(error as Error).message}`, error);
  }
}
