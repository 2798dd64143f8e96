/**
 * `npm start`: the example host API with mesh-subscriptions mounted, on HOST:PORT.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import closeWithGrace from 'close-with-grace';
import pino from 'pino';
import { safeLoggerOptions } from 'mesh-subscriptions';
import { API_KEY_HEADER } from './api-keys.js';
import { buildApp } from './app.js';
import { readConfig } from './config.js';
import { openDatabase } from './database.js';
import { migrate } from './migrations.js';

/** Drain, then close: past this the process exits anyway. */
const SHUTDOWN_GRACE_MS = 10_000;

const config = readConfig();
// Its API keys travel in a header of its own: censored too.
const log = pino(safeLoggerOptions(config.logLevel, [API_KEY_HEADER]));

const db = await openDatabase(config, log);
await migrate(db.sql);
// The dashboard that `npm run build` bundles next to this file (example/dist/web); absent under `npm run dev`.
const web = fileURLToPath(new URL('./web', import.meta.url));
if (!existsSync(path.join(web, 'index.html'))) log.warn({ web }, 'no dashboard built here: `npm run build` makes one');
const app = await buildApp({
  sql: db.sql,
  mesh: { directSql: db.directSql },
  loggerInstance: log,
  webRoot: existsSync(web) ? web : undefined,
});

closeWithGrace({ delay: config.shutdownDrainMs + SHUTDOWN_GRACE_MS, logger: log }, async ({ signal, err }) => {
  if (err) log.error({ err }, 'shutting down after an error');
  else log.info({ signal, drainMs: config.shutdownDrainMs }, 'shutting down: not ready, draining');
  // /readyz fails first, so that a load balancer stops sending new clients here; open sockets
  // keep streaming until app.close() sends them 1001 (they reconnect elsewhere, with since).
  app.mesh.drain();
  if (!err) await new Promise((resolve) => setTimeout(resolve, config.shutdownDrainMs));
  await app.close();
  await db.close();
});

await app.listen({ host: config.host, port: config.port });
