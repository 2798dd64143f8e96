/**
 * Prometheus metrics (prom-client), in the host's registry when it gives one (`metricsRegistry`),
 * else in the plugin's own (`app.mesh.metrics`). Labels are bounded sets — frame types, codes,
 * kinds — never a task or an owner. What the send path counts (deliveries, bytes per socket write)
 * is added to plain numbers and handed to prom-client at scrape time: counting is an addition.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { MeshEvents } from './core/events.js';

import type { AuthStage, DropReason, FrameOutType, MetricsSink } from './core/ports.js';

/** What the gauges read at scrape time. */
export interface MetricsSource {
  connections(): number;
  subscriptions(): { task: number; all: number; output: number };
  /** Seconds committed events have been waiting behind a running transaction (0: none). */
  heldBackSeconds(): number;
}

export class MeshMetrics implements MetricsSink {
  /** Send-path counts not yet handed to their counters (see `collect` below). */
  private readonly pending = { updates: 0, outputs: 0, bytes: 0 };
  /**
   * Frames in and control frames out, by type, not yet handed to their counters: a labelled
   * `inc` hashes its labels on every call, two per subscribe, and a reconnect storm is all subscribes.
   */
  private readonly pendingIn = new Map<string, number>();
  private readonly pendingOut = new Map<string, number>();
  private readonly errors: Counter<'code'>;
  private readonly closes: Counter<'code'>;
  private readonly slow: Counter<'kind'>;
  private readonly latency: Histogram;
  private readonly authFailures: Counter<'stage'>;
  private readonly busLag: Gauge;
  private readonly catchUps: Counter;
  private readonly listenerRestarts: Counter;
  private readonly dropped: Counter<'reason'>;

  constructor(
    readonly registry: Registry,
    source: MetricsSource,
    events: MeshEvents,
  ) {
    const registers = [registry];
    new Gauge({
      name: 'mesh_connections',
      help: 'Open WebSocket connections',
      registers,
      collect() {
        this.set(source.connections());
      },
    });
    new Gauge({
      name: 'mesh_subscriptions',
      help: 'Subscriptions held by open connections, by kind (task: subscribe, all: subscribeAll, output: subscribeOutput)',
      labelNames: ['kind'],
      registers,
      collect() {
        for (const [kind, n] of Object.entries(source.subscriptions())) this.set({ kind }, n);
      },
    });
    const { pendingIn, pendingOut } = this;
    new Counter({
      name: 'mesh_frames_received_total',
      help: 'Client frames received, by type (invalid: not a valid frame)',
      labelNames: ['type'],
      registers,
      collect() {
        handOver(this, pendingIn);
      },
    });
    const pending = this.pending;
    new Counter({
      name: 'mesh_frames_sent_total',
      help: 'Frames handed to sockets, by type',
      labelNames: ['type'],
      registers,
      collect() {
        this.inc({ type: 'taskUpdated' }, pending.updates);
        this.inc({ type: 'taskOutput' }, pending.outputs);
        pending.updates = pending.outputs = 0;
        handOver(this, pendingOut);
      },
    });
    new Counter({
      name: 'mesh_sent_bytes_total',
      help: 'Bytes written to sockets (WebSocket frames included)',
      registers,
      collect() {
        this.inc(pending.bytes);
        pending.bytes = 0;
      },
    });
    this.errors = new Counter({ name: 'mesh_errors_total', help: 'error frames sent, by code', labelNames: ['code'], registers });
    this.closes = new Counter({
      name: 'mesh_closes_total',
      help: 'Close frames the server sent, by close code',
      labelNames: ['code'],
      registers,
    });
    this.slow = new Counter({
      name: 'mesh_slow_consumer_events_total',
      help: 'Slow readers: updates conflated away, output frames dropped (then lagged), sockets disconnected',
      labelNames: ['kind'],
      registers,
    });
    this.latency = new Histogram({
      name: 'mesh_publish_to_write_seconds',
      help: 'From publish (the log row written, for the PostgreSQL bus) to the frames handed to the sockets, per event',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    this.authFailures = new Counter({
      name: 'mesh_auth_failures_total',
      help: 'Refused credentials: at the upgrade, at re-authentication (socket closed with 4401), at ticket minting',
      labelNames: ['stage'],
      registers,
    });
    this.busLag = new Gauge({
      name: 'mesh_bus_lag_seconds',
      help: 'PostgreSQL bus: age of the newest event this instance has read when it read it (0: nothing new to read)',
      registers,
    });
    this.catchUps = new Counter({
      name: 'mesh_bus_catch_ups_total',
      help: 'PostgreSQL bus: reads that found events not announced by a wake-up (after a reconnect, a lost NOTIFY, a poll)',
      registers,
    });
    this.listenerRestarts = new Counter({
      name: 'mesh_bus_listener_restarts_total',
      help: 'PostgreSQL bus: the LISTEN connection came back after it dropped or went silent',
      registers,
    });
    new Gauge({
      name: 'mesh_bus_held_back_seconds',
      help: 'PostgreSQL bus: how long committed events have been waiting behind a transaction still running (0: none waits)',
      registers,
      collect() {
        this.set(source.heldBackSeconds());
      },
    });
    this.dropped = new Counter({
      name: 'mesh_events_dropped_total',
      help: 'Logged events skipped on the way to the sockets (each with an error log line), by reason; the events after them went on',
      labelNames: ['reason'],
      registers,
    });
    // Present at 0 from the start, so that rate() and alerts see them before the first event.
    for (const reason of ['unreadable', 'invalid', 'unencodable']) this.dropped.inc({ reason }, 0);
    for (const kind of ['conflated', 'lagged', 'disconnected']) this.slow.inc({ kind }, 0);
    for (const stage of ['upgrade', 'reauthenticate', 'ticket']) this.authFailures.inc({ stage }, 0);
    events.on('caughtUp', ({ superseded, lagged }) => {
      if (superseded > 0) this.slow.inc({ kind: 'conflated' }, superseded);
      let dropped = 0;
      for (const n of lagged.values()) dropped += n;
      if (dropped > 0) this.slow.inc({ kind: 'lagged' }, dropped);
    });
    events.on('slowConsumer', () => this.slow.inc({ kind: 'disconnected' }));
    events.on('listenerRestarted', () => this.listenerRestarts.inc());
  }

  frameIn(type: string): void {
    this.pendingIn.set(type, (this.pendingIn.get(type) ?? 0) + 1);
  }

  /** `recipients` sockets were handed an event's frame; it was published at `publishedAt` (ms since the epoch). */
  delivered(kind: 'update' | 'output', recipients: number, publishedAt: number | undefined): void {
    if (kind === 'update') this.pending.updates += recipients;
    else this.pending.outputs += recipients;
    if (publishedAt !== undefined) this.latency.observe(Math.max(0, Date.now() - publishedAt) / 1000);
  }

  /** A control frame (ack, error, lagged, resyncRequired), or a replayed event. */
  sent(type: FrameOutType, count = 1): void {
    this.pendingOut.set(type, (this.pendingOut.get(type) ?? 0) + count);
  }

  written(bytes: number): void {
    this.pending.bytes += bytes;
  }

  error(code: string): void {
    this.errors.inc({ code });
    this.sent('error');
  }

  closed(code: number): void {
    this.closes.inc({ code: String(code) });
  }

  droppedEvent(reason: DropReason): void {
    this.dropped.inc({ reason });
  }

  authFailed(stage: AuthStage): void {
    this.authFailures.inc({ stage });
  }

  /** Takes the `mesh_*` metrics out of the registry, so that a new app can register them again. */
  unregister(): void {
    for (const metric of this.registry.getMetricsAsArray()) {
      if (metric.name.startsWith('mesh_')) this.registry.removeSingleMetric(metric.name);
    }
  }

  busRead(lagSeconds: number, caughtUp: boolean): void {
    this.busLag.set(lagSeconds);
    if (caughtUp) this.catchUps.inc();
  }
}

/** Adds counts kept by label `type` to their counter, and starts them again from zero. */
function handOver(counter: Counter<'type'>, counts: Map<string, number>): void {
  for (const [type, n] of counts) counter.inc({ type }, n);
  counts.clear();
}

export { Registry };
