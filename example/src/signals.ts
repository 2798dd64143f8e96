/**
 * SIGINT and SIGTERM for the example server's processes: the first starts a graceful stop, its
 * echoes are ignored, a later one exits at once.
 */
import type { Logger } from 'pino';

/**
 * Ctrl-C in a terminal reaches every process of its foreground group, and npm passes SIGINT and
 * SIGTERM on to its child as well (and a cluster's primary passes them on to its workers): one
 * Ctrl-C under `npm start` (or a SIGTERM to the group, as systemd sends) arrives two or three times
 * within milliseconds. Those echoes are one request; a signal later than this is a second one.
 */
export const SIGNAL_ECHO_MS = 1_000;

export interface StopSignals {
  /** Called once, with the first signal, unless `closing()` was already true. */
  stop(signal: NodeJS.Signals): void;
  /** True once the process is shutting down for any reason (a signal, an error). */
  closing(): boolean;
  /** Called with a second signal, just before the process exits with 1. */
  beforeExit?(signal: NodeJS.Signals): void;
}

export function onStopSignals(log: Logger, { stop, closing, beforeExit }: StopSignals): void {
  let first: { signal: NodeJS.Signals; at: number } | undefined;
  const onSignal = (signal: NodeJS.Signals) => {
    const now = Date.now();
    if (!closing()) {
      first = { signal, at: now };
      stop(signal);
    } else if (!first || signal !== first.signal || now - first.at > SIGNAL_ECHO_MS) {
      log.warn({ signal }, 'a second signal while shutting down: exiting without waiting');
      beforeExit?.(signal);
      process.exit(1);
    }
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
}
