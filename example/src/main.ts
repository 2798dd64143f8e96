/**
 * `npm start`: the example host API with mesh-subscriptions mounted, on HOST:PORT.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import closeWithGrace from 'close-with-grace';
import type { FastifyInstance } from 'fastify';
import pino from 'pino';
import { safeLoggerOptions } from 'mesh-subscriptions';
import { API_KEY_HEADER } from './api-keys.js';
import { buildApp } from './app.js';
import { readConfig } from './config.js';
import { openDatabase, type Database } from './database.js';
import { loadEnvFile } from './env-file.js';
import { migrate } from './migrations.js';

/** Drain, then close: past this the process exits anyway. */
const SHUTDOWN_GRACE_MS = 10_000;

const envFile = loadEnvFile();
const config = readConfig();
// Its API keys travel in a header of its own: censored too.
const log = pino(safeLoggerOptions(config.logLevel, [API_KEY_HEADER]));
if (envFile) log.info({ envFile }, `settings from ${envFile} (the environment wins)`);

/**
 * Ctrl-C in a terminal reaches every process of its foreground group, and npm passes SIGINT and
 * SIGTERM on to its child as well: one Ctrl-C under `npm start` (or a SIGTERM to the group, as
 * systemd sends) arrives here two or three times within milliseconds. Those echoes are one request;
 * a signal later than this is a second one, which exits at once.
 */
const SIGNAL_ECHO_MS = 1_000;
let firstSignal: { signal: NodeJS.Signals; at: number } | undefined;
let closing = false;
let db: Database | undefined;
let app: FastifyInstance | undefined;
let dashboard = false;

// Opened inside a promise that shutdown waits for, with the signal handlers below already in place:
// a signal during start-up still stops the embedded PostgreSQL, which Ctrl-C no longer reaches.
const startUp = (async () => {
  db = await openDatabase(config, log);
  await migrate(db.sql);
  // The dashboard that `npm run build` bundles next to this file (example/dist/web); absent under `npm run dev`.
  const web = fileURLToPath(new URL('./web', import.meta.url));
  if (!existsSync(path.join(web, 'index.html'))) log.warn({ web }, 'no dashboard built here: `npm run build` makes one');
  dashboard = existsSync(web);
  app = await buildApp({ sql: db.sql, mesh: { directSql: db.directSql }, loggerInstance: log, webRoot: dashboard ? web : undefined });
})();

const shutdown = closeWithGrace(
  // SIGINT and SIGTERM are ours (below): close-with-grace would take their echoes for a second signal.
  { delay: config.shutdownDrainMs + SHUTDOWN_GRACE_MS, logger: log, skip: ['SIGINT', 'SIGTERM'] },
  async ({ signal = firstSignal?.signal, err }) => {
    closing = true;
    const started = Date.now();
    const interrupted = firstSignal?.signal === 'SIGINT';
    if (err) log.error({ err }, 'shutting down after an error');
    await startUp.catch(() => {});
    if (app) {
      // Someone at a terminal, not a load balancer, is waiting: the drain is for open sockets only.
      const drainMs = err || (interrupted && app.mesh.stats().connections === 0) ? 0 : config.shutdownDrainMs;
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

function onSignal(signal: NodeJS.Signals) {
  const now = Date.now();
  if (!closing) {
    firstSignal = { signal, at: now };
    shutdown.close();
  } else if (!firstSignal || signal !== firstSignal.signal || now - firstSignal.at > SIGNAL_ECHO_MS) {
    log.warn({ signal }, 'a second signal while shutting down: exiting without waiting');
    process.exit(1);
  }
}
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);

await startUp;
if (!closing) {
  const address = await app!.listen({ host: config.host, port: config.port });
  const where = dashboard ? `dashboard at ${address}/, API docs at ${address}/docs` : `API docs at ${address}/docs`;
  log.info({ ...(dashboard ? { dashboard: `${address}/` } : {}), docs: `${address}/docs` }, `${where} (Ctrl-C stops)`);
}
