/**
 * WORKERS > 1: this process is the primary of a node:cluster. It opens the database (starting the
 * embedded PostgreSQL, once), runs the host's migrations once, then forks the workers (serve.ts),
 * which share HOST:PORT and share events through the PostgreSQL bus. It serves nothing itself.
 */
import cluster, { type Worker } from 'node:cluster';
import closeWithGrace from 'close-with-grace';
import type { Logger } from 'pino';
import type { ServerConfig } from './config.js';
import { openDatabase } from './database.js';
import { startEmbeddedPostgres, type EmbeddedDatabase } from './embedded-postgres.js';
import { migrate } from './migrations.js';
import { SHUTDOWN_GRACE_MS, dashboardRoot, isListeningMessage, logAddress } from './serve.js';
import { onStopSignals } from './signals.js';

/** A worker that lived at least this long before it died starts its slot's back-off afresh. */
const STABLE_MS = 10_000;

/** How long before forking again a worker that died after `deaths` short lives in a row. */
export function respawnDelayMs(deaths: number): number {
  return Math.min(250 * 2 ** Math.max(deaths - 1, 0), 10_000);
}

/** The primary waits this much beyond a worker's own limit, so that the worker's timer fires first. */
const PRIMARY_EXTRA_GRACE_MS = 5_000;

interface Slot {
  worker: Worker | undefined;
  forkedAt: number;
  deaths: number;
  timer: NodeJS.Timeout | undefined;
}

export async function runPrimary(config: ServerConfig, log: Logger): Promise<void> {
  let closing = false;
  let firstSignal: NodeJS.Signals | undefined;
  let embedded: EmbeddedDatabase | undefined;
  /** Workers that exited non-zero while shutting down, or that failed to start. */
  let failed: string | undefined;
  const slots: Slot[] = Array.from({ length: config.workers }, () => ({ worker: undefined, forkedAt: 0, deaths: 0, timer: undefined }));
  const exits = new Map<Worker, Promise<void>>();
  /** Slots whose first worker listens: all of them, and the address is named. */
  const started = new Set<Slot>();
  const { built, web } = dashboardRoot();
  let workerEnv: Record<string, string> = {};

  const fork = (slot: Slot) => {
    slot.timer = undefined;
    if (closing) return;
    const worker = cluster.fork(workerEnv);
    slot.worker = worker;
    slot.forkedAt = Date.now();
    exits.set(worker, new Promise((resolve) => worker.once('exit', () => resolve())));
    log.debug({ workerId: worker.id, workerPid: worker.process.pid }, 'worker forked');
  };

  cluster.on('message', (worker, message) => {
    if (!isListeningMessage(message)) return;
    const slot = slots.find((s) => s.worker === worker);
    if (!slot || started.has(slot)) return;
    started.add(slot);
    if (started.size === slots.length && !closing) {
      logAddress(log, message.address, message.dashboard, { workers: slots.length }, `${slots.length} workers; `);
    }
  });

  cluster.on('exit', (worker, code, signal) => {
    const slot = slots.find((s) => s.worker === worker);
    exits.delete(worker);
    const how = { workerId: worker.id, workerPid: worker.process.pid, code, signal };
    if (!slot) return;
    slot.worker = undefined;
    if (closing) {
      // Killed by the signal it was sent before it had handlers (still starting): stopped as asked.
      if (code !== 0 && code !== null) {
        failed ??= `worker ${worker.id} exited with ${code ?? signal} while shutting down`;
        log.warn(how, 'worker exited while shutting down, not cleanly');
      } else log.debug(how, 'worker exited');
      return;
    }
    if (!started.has(slot)) {
      // A worker that never listened failed on something every other would (a setting, the
      // database, the port): refuse to start, as one process does, rather than fork it forever.
      failed = `worker ${worker.id} exited with ${code ?? signal} before it listened`;
      log.error(how, 'a worker failed to start: stopping');
      void shutdown.close();
      return;
    }
    const lived = Date.now() - slot.forkedAt;
    slot.deaths = lived >= STABLE_MS ? 1 : slot.deaths + 1;
    const delayMs = respawnDelayMs(slot.deaths);
    log.error({ ...how, livedMs: lived, delayMs }, 'worker died: forking another');
    slot.timer = setTimeout(() => fork(slot), delayMs);
  });

  const startUp = (async () => {
    // Started here, once, in a process group of its own (Ctrl-C does not stop it under the
    // workers' feet); it is the workers' DATABASE_URL. DATABASE_DIRECT_URL passes to them as set.
    embedded = config.databaseUrl ? undefined : await startEmbeddedPostgres({ dir: config.dataDir, log, detached: true });
    const databaseUrl = config.databaseUrl ?? embedded!.url;
    const db = await openDatabase({ ...config, databaseUrl }, log);
    try {
      await migrate(db.sql);
    } finally {
      // Only the pools: the workers have their own.
      await db.close();
    }
    if (!built) log.warn({ web }, 'no dashboard built here: `npm run build` makes one');
    workerEnv = embedded ? { DATABASE_URL: databaseUrl } : {};
    for (const slot of slots) fork(slot);
  })();

  const shutdown = closeWithGrace(
    {
      delay: config.shutdownDrainMs + SHUTDOWN_GRACE_MS + PRIMARY_EXTRA_GRACE_MS,
      logger: log,
      // SIGINT and SIGTERM are ours (below): close-with-grace would take their echoes for a second signal.
      skip: ['SIGINT', 'SIGTERM'],
    },
    async ({ signal = firstSignal, err }) => {
      closing = true;
      const began = Date.now();
      if (err) log.error({ err }, 'shutting down after an error');
      await startUp.catch((error: unknown) => {
        failed ??= 'start-up failed';
        log.error({ err: error }, 'start-up failed');
      });
      for (const slot of slots) clearTimeout(slot.timer);
      // Ctrl-C reached the workers already (one foreground group): a second copy is an echo to them.
      const stopWith = signal === 'SIGINT' || signal === 'SIGTERM' ? signal : 'SIGTERM';
      if (exits.size > 0) log.info({ signal, workers: exits.size }, 'shutting down: stopping the workers');
      for (const worker of exits.keys()) worker.process.kill(stopWith);
      await Promise.all(exits.values());
      await embedded?.stop();
      log.info({ durationMs: Date.now() - began }, 'stopped');
      if (failed) throw new Error(failed);
    },
  );

  onStopSignals(log, {
    closing: () => closing,
    stop(signal) {
      firstSignal = signal;
      void shutdown.close();
    },
    // Workers stop at their own second signal; one sent to the primary alone is passed on.
    beforeExit(signal) {
      for (const worker of exits.keys()) worker.process.kill(signal);
    },
  });

  await startUp;
}
