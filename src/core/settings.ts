/**
 * What the core is configured with: plain numbers and the host's checks, already resolved and
 * grouped by the part that uses them. The plugin maps its options onto this (src/plugin.ts); the
 * core never reads the plugin's options.
 */
import type { BackpressureLimits } from './outbound.js';

export interface SessionLimits {
  /** Largest client frame in bytes (ws enforces it too when the plugin owns the ws server). */
  maxPayload: number;
  maxSubscriptions: number;
  maxFramesPerSecond: number;
  frameBurst: number;
  floodCloseAfterMs: number;
}

export interface HubSettings {
  limits: SessionLimits;
  backpressure: BackpressureLimits;
  heartbeat: { intervalMs: number };
  reauth: { intervalMs: number };
  replay: { maxEvents: number; concurrency: number };
  /** Whether the hub settles a publish's owner before logging it; otherwise the log's own SQL does. */
  settlesOwners: boolean;
  /** Whether `publish(n, { sql })` is possible: the bus writes in the host's transaction. */
  transactions: boolean;
}
