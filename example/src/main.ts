/**
 * `npm start`: the example host API with mesh-subscriptions mounted, on HOST:PORT: one process
 * (serve.ts), or with WORKERS > 1 a cluster's primary (cluster.ts) and, in each worker, serve.ts.
 */
import cluster from 'node:cluster';
import pino from 'pino';
import { safeLoggerOptions } from 'mesh-subscriptions';
import { API_KEY_HEADER } from './api-keys.js';
import { runPrimary } from './cluster.js';
import { readConfig, type ServerConfig } from './config.js';
import { loadEnvFile } from './env-file.js';
import { serve } from './serve.js';

const envFile = loadEnvFile();
let config: ServerConfig;
try {
  config = readConfig();
} catch (error) {
  // A setting out of range is the operator's to fix: its message, without a stack.
  pino().fatal(error instanceof Error ? error.message : String(error));
  process.exit(1);
}
// Its API keys travel in a header of its own: censored too. Each worker's lines say which it is
// (every line names its pid already). A cluster's processes share one stdout and exit right after
// their last lines: written synchronously, those are neither lost nor reordered at exit (pino's
// default stream still has the previous line in flight when process.exit() flushes the next).
const options = safeLoggerOptions(config.logLevel, [API_KEY_HEADER]);
const root = config.workers > 1 ? pino(options, pino.destination({ dest: 1, sync: true })) : pino(options);
const log = cluster.isWorker ? root.child({ worker: cluster.worker!.id }) : root;
if (envFile && cluster.isPrimary) log.info({ envFile }, `settings from ${envFile} (the environment wins)`);

if (config.workers > 1 && cluster.isPrimary) await runPrimary(config, log);
else await serve(config, log);
