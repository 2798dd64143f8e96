/**
 * One server process: the example host API on HOST:PORT, alone (WORKERS=1) or as one worker of a
 * cluster (cluster.ts), until SIGINT or SIGTERM.
 */
import cluster from 'node:cluster';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import closeWithGrace from 'close-with-grace';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { buildApp } from './app.js';
import type { ServerConfig } from './config.js';
import { openDatabase, type Database } from './database.js';
import { migrate } from './migrations.js';
import { onStopSignals } from './signals.js';

/** Drain, then close: past this the process exits anyway. */
export const SHUTDOWN_GRACE_MS = 10_000;

/** What a worker tells its primary once it listens: the primary names the address, once. */
export interface ListeningMessage {
  type: 'mesh:listening';
  address: string;
  dashboard: boolean;
}

export function isListeningMessage(message: unknown): message is ListeningMessage {
  return typeof message === 'object' && message !== null && (message as { type?: unknown }).type === 'mesh:listening';
}

/** The dashboard that `npm run build` bundles next to this file (example/dist/web); absent under `npm run dev`. */
export function dashboardRoot(): { web: string; built: boolean; present: boolean } {
  const web = fileURLToPath(new URL('./web', import.meta.url));
  return { web, built: existsSync(path.join(web, 'index.html')), present: existsSync(web) };
}

/** The start-up line that names where the server is. */
export function logAddress(log: Logger, address: string, dashboard: boolean, extra: Record<string, unknown> = {}, note = ''): void {
  const where = dashboard ? `dashboard at ${address}/, API docs at ${address}/docs` : `API docs at ${address}/docs`;
  log.info({ ...(dashboard ? { dashboard: `${address}/` } : {}), docs: `${address}/docs`, ...extra }, `${where} (${note}Ctrl-C stops)`);
}

/**
 * Serves until stopped. In a cluster's worker the primary has opened the database (DATABASE_URL
 * is the one it gives) and migrated it, and it names the address: the worker tells it instead.
 */
export async function serve(config: ServerConfig, log: Logger): Promise<void> {
  const worker = cluster.isWorker;
  let closing = false;
  let firstSignal: NodeJS.Signals | undefined;
  let db: Database | undefined;
  let app: FastifyInstance | undefined;
  const { web, built, present: dashboard } = dashboardRoot();

  // Opened inside a promise that shutdown waits for, with the signal handlers below already in place:
  // a signal during start-up still stops the embedded PostgreSQL, which Ctrl-C no longer reaches.
  const startUp = (async () => {
    db = await openDatabase(config, log);
    if (!worker) await migrate(db.sql);
    if (!built && !worker) log.warn({ web }, 'no dashboard built here: `npm run build` makes one');
    app = await buildApp({ sql: db.sql, mesh: { directSql: db.directSql }, loggerInstance: log, webRoot: dashboard ? web : undefined });
  })();

  const shutdown = closeWithGrace(
    // SIGINT and SIGTERM are ours (below): close-with-grace would take their echoes for a second signal.
    { delay: config.shutdownDrainMs + SHUTDOWN_GRACE_MS, logger: log, skip: ['SIGINT', 'SIGTERM'] },
    async ({ signal = firstSignal, err }) => {
      closing = true;
      const started = Date.now();
      if (err) log.error({ err }, 'shutting down after an error');
      await startUp.catch(() => {});
      if (app) {
        // Someone at a terminal, not a load balancer, is waiting: the drain is for open sockets only.
        const drainMs = err || (firstSignal === 'SIGINT' && app.mesh.stats().connections === 0) ? 0 : config.shutdownDrainMs;
        if (!err) log.info({ signal, drainMs }, 'shutting down: not ready, draining');
        // /readyz fails first, so that a load balancer stops sending new clients here; open sockets
        // keep streaming until app.close() sends them 1001 (they reconnect elsewhere, with since).
        app.mesh.drain();
        if (drainMs > 0) await new Promise((resolve) => setTimeout(resolve, drainMs));
        await app.close();
        log.info('server closed');
      }
      // The database goes last: the server needed it until it closed (the embedded one is in a
      // process group of its own, so Ctrl-C has not stopped it under the server's feet).
      await db?.close();
      log.info({ durationMs: Date.now() - started }, 'stopped');
    },
  );

  onStopSignals(log, {
    closing: () => closing,
    stop(signal) {
      firstSignal = signal;
      void shutdown.close();
    },
  });

  await startUp;
  if (closing) return;
  const address = await app!.listen({ host: config.host, port: config.port });
  if (worker) process.send!({ type: 'mesh:listening', address, dashboard } satisfies ListeningMessage);
  else logAddress(log, address, dashboard);
}
