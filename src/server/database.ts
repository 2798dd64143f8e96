/**
 * The example server's database: DATABASE_URL when set, otherwise its own embedded PostgreSQL.
 */
import postgres, { type Sql } from 'postgres';
import type { Logger } from 'pino';
import type { ServerConfig } from './config.js';
import { startEmbeddedPostgres } from './embedded-postgres.js';

export interface Database {
  sql: Sql<any>;
  /** Ends the client, then stops the embedded server if this process started it. */
  close(): Promise<void>;
}

export async function openDatabase(config: ServerConfig, log: Logger): Promise<Database> {
  const embedded = config.databaseUrl ? undefined : await startEmbeddedPostgres({ dir: config.dataDir, log });
  const url = config.databaseUrl ?? embedded!.url;
  const sql = postgres(url, {
    max: 10,
    onnotice: () => {},
    connection: { application_name: 'mesh-subscriptions' },
  });
  return {
    sql,
    async close() {
      await sql.end({ timeout: 5 });
      await embedded?.stop();
    },
  };
}
