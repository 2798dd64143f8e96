/**
 * The example host's schema. Idempotent, and serialised by an advisory lock so that several
 * instances starting at once do not race each other.
 */
import type { Sql } from 'postgres';

const MIGRATION_LOCK = 0x6d657368; // "mesh"

export async function migrate(sql: Sql<any>): Promise<void> {
  await sql.begin(async (tx) => {
    await tx`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK})`;
    await tx.unsafe(`
      CREATE TABLE IF NOT EXISTS tasks (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        owner_id uuid NULL,
        name text NOT NULL DEFAULT '',
        status text NOT NULL DEFAULT 'pending',
        version integer NOT NULL DEFAULT 1,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
      );
      CREATE INDEX IF NOT EXISTS tasks_owner_id_idx ON tasks (owner_id);
      CREATE TABLE IF NOT EXISTS api_keys (
        key_hash text PRIMARY KEY,
        owner_id uuid NULL,
        is_admin boolean NOT NULL DEFAULT false,
        created_at timestamptz NOT NULL DEFAULT now(),
        revoked_at timestamptz NULL
      );
      -- Names a key without revealing it: the principal's id, what re-authentication checks.
      ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid();
    `);
  });
}
