/** The example server's settings, all from the environment (see .env.example). */
import path from 'node:path';

export interface ServerConfig {
  host: string;
  port: number;
  logLevel: string;
  /** Unset: the embedded PostgreSQL under `dataDir` is used. */
  databaseUrl: string | undefined;
  /**
   * PostgreSQL directly, when `databaseUrl` is a transaction-mode pooler (PgBouncer): the plugin's
   * LISTEN connection, advisory locks and migrations use it. Unset: `databaseUrl` is direct.
   */
  databaseDirectUrl: string | undefined;
  dataDir: string;
  /** On SIGTERM, how long /readyz fails (new sockets refused) before the server closes. */
  shutdownDrainMs: number;
  /** A connection to PostgreSQL not established within this fails (0: no limit). */
  databaseConnectTimeoutMs: number;
  /** PostgreSQL's statement_timeout for our sessions (0: no limit). */
  databaseStatementTimeoutMs: number;
  /** Processes serving HOST:PORT (node:cluster); 1: this process alone, no cluster. */
  workers: number;
}

/** Far more than any host's cores: a typo (6400) refuses to start rather than fork thousands. */
export const MAX_WORKERS = 64;

function workerCount(value: string | undefined): number {
  if (value === undefined || value === '') return 1;
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < 1 || n > MAX_WORKERS) {
    throw new Error(`WORKERS must be a whole number of processes from 1 to ${MAX_WORKERS}, got ${value}`);
  }
  return n;
}

function nonNegative(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined || value === '') return fallback;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${name} must be a whole number of ms, got ${value}`);
  return n;
}

export function readConfig(env: NodeJS.ProcessEnv = process.env): ServerConfig {
  const port = Number(env.PORT ?? 3000);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`PORT must be a port number, got ${env.PORT}`);
  if (env.DATABASE_DIRECT_URL && !env.DATABASE_URL) {
    throw new Error('DATABASE_DIRECT_URL is set without DATABASE_URL: it is the direct way to the database DATABASE_URL pools');
  }
  return {
    host: env.HOST || '127.0.0.1',
    port,
    logLevel: env.LOG_LEVEL || 'info',
    databaseUrl: env.DATABASE_URL || undefined,
    databaseDirectUrl: env.DATABASE_DIRECT_URL || undefined,
    dataDir: path.resolve(env.DATA_DIR || '.data'),
    shutdownDrainMs: nonNegative('SHUTDOWN_DRAIN_MS', env.SHUTDOWN_DRAIN_MS, 5_000),
    databaseConnectTimeoutMs: nonNegative('DATABASE_CONNECT_TIMEOUT_MS', env.DATABASE_CONNECT_TIMEOUT_MS, 5_000),
    databaseStatementTimeoutMs: nonNegative('DATABASE_STATEMENT_TIMEOUT_MS', env.DATABASE_STATEMENT_TIMEOUT_MS, 10_000),
    workers: workerCount(env.WORKERS),
  };
}
