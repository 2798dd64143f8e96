/**
 * The example server's database: DATABASE_URL when set, otherwise its own embedded PostgreSQL;
 * and DATABASE_DIRECT_URL, when DATABASE_URL is a transaction-mode pooler.
 */
import postgres, { type Sql } from 'postgres';
import type { Logger } from 'pino';
import type { ServerConfig } from './config.js';
import { startEmbeddedPostgres } from './embedded-postgres.js';

export interface Database {
  sql: Sql<any>;
  /**
   * A direct connection (DATABASE_DIRECT_URL) for what needs a session (the plugin's `directSql`);
   * `sql` itself when there is none.
   */
  directSql: Sql<any>;
  /** Ends the client, then stops the embedded server if this process started it. */
  close(): Promise<void>;
}

/**
 * Seconds before a connection is tried again after `attempts` failed ones in a row: 25–50 ms,
 * doubling, at most 0.5–1 s. postgres.js's own grows to 10–20 s after a few failures, which held
 * every request (and /readyz) that long after a restart of the database had long finished.
 */
export function reconnectDelaySeconds(attempts: number): number {
  return Math.min(0.05 * 2 ** attempts, 1) * (0.5 + Math.random() / 2);
}

export async function openDatabase(config: ServerConfig, log: Logger): Promise<Database> {
  const embedded = config.databaseUrl ? undefined : await startEmbeddedPostgres({ dir: config.dataDir, log, detached: true });
  const url = config.databaseUrl ?? embedded!.url;
  const options = {
    onnotice: () => {},
    // What a request may wait on the database is bounded: a connection that does not come up in
    // time fails, and so does a statement that runs too long (both answer 503 UNAVAILABLE).
    connect_timeout: config.databaseConnectTimeoutMs / 1000,
    backoff: reconnectDelaySeconds,
    connection: {
      application_name: 'mesh-subscriptions',
      ...(config.databaseStatementTimeoutMs > 0 ? { statement_timeout: config.databaseStatementTimeoutMs } : {}),
    },
  };
  // A direct URL says DATABASE_URL is a transaction-mode pooler: no named prepared statements there
  // (one missing on the next server makes postgres.js re-run a COMMIT that PostgreSQL rolls back).
  const sql = postgres(url, { ...options, max: 10, prepare: !config.databaseDirectUrl });
  // The plugin's LISTEN connection is a client of its own; this pool serves its pruning and migrations.
  const directSql = config.databaseDirectUrl ? postgres(config.databaseDirectUrl, { ...options, max: 2 }) : sql;
  return {
    sql,
    directSql,
    async close() {
      await sql.end({ timeout: 5 });
      if (directSql !== sql) await directSql.end({ timeout: 5 });
      await embedded?.stop();
    },
  };
}
