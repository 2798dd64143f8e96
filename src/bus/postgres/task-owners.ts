/** Task owners read from the host's tasks table, through the host's `postgres` client. */
import type { Sql } from 'postgres';
import type { OwnerResolver } from '../../core/ports.js';

export function sqlOwnerResolver(sql: Sql<any>, table: string): OwnerResolver {
  return async (taskIds) => {
    const rows = await sql<{ id: string; owner_id: string | null }[]>`
      SELECT id::text AS id, owner_id::text AS owner_id FROM ${sql(table)} WHERE id = ANY(${taskIds as string[]}::uuid[])`;
    return new Map(rows.map((row) => [row.id, row.owner_id]));
  };
}
