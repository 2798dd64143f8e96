/**
 * The hub composes the core: the channels host code publishes into, the delivery pipeline from
 * the bus to the subscription index, the history replays read, the open connections with their
 * heartbeat, slow-consumer sweep and re-authentication sweep, and the shutdown.
 */
import type { EventBus } from '../bus/bus.js';
import { CloseCode } from '../errors.js';
import { Channels } from './channels.js';
import { ClientConnection, type ConnectionContext, type Place } from './connection.js';
import { DeliveryPipeline } from './delivery.js';
import type { MeshEvents } from './events.js';
import { FlushScheduler } from './flush-scheduler.js';
import { Frames } from './frames.js';
import { EventHistory } from './history.js';
import type { OwnerDirectory } from './owners.js';
import type { ClientSocket, DropReason, FrameText, Logger, MetricsSink, Principal, Recheck } from './ports.js';
import { ReauthSweep } from './reauth-sweep.js';
import type { HubSettings } from './settings.js';
import { SubscriptionIndex } from './subscription-index.js';

/** The slow-consumer sweep runs at least this often, so a stalled socket is cut within it of its limit. */
const SWEEP_MS = 1_000;

export interface HubParts {
  bus: EventBus;
  owners: OwnerDirectory;
  events: MeshEvents;
  metrics: MetricsSink;
  log: Logger;
  /** The transport's framing of a server message. */
  frameText: FrameText;
  /** How open sockets are authenticated again. */
  recheck: Recheck;
}

export class MeshHub {
  readonly index = new SubscriptionIndex<ClientConnection>();
  readonly connections = new Set<ClientConnection>();
  readonly channels: Channels;
  /** The log as replays and the REST history read it, for the principal asking. */
  readonly history: EventHistory;
  readonly events: MeshEvents;

  private readonly bus: EventBus;
  private readonly delivery: DeliveryPipeline;
  private readonly reauth: ReauthSweep;
  private readonly recheck: Recheck;
  private readonly context: ConnectionContext;
  private readonly timers: NodeJS.Timeout[] = [];

  constructor(
    parts: HubParts,
    private readonly settings: HubSettings,
  ) {
    const { bus, owners, events, metrics, log } = parts;
    this.bus = bus;
    this.events = events;
    this.recheck = parts.recheck;
    const frames = new Frames(parts.frameText);
    this.channels = new Channels(bus, owners, settings, log);
    this.delivery = new DeliveryPipeline(this.index, owners, frames, this.channels, metrics, log);
    this.history = new EventHistory(
      bus,
      owners,
      (logged) => this.delivery.frameOf(logged),
      () => this.delivery.behind(),
      {
        maxEvents: settings.replay.maxEvents,
        concurrency: settings.replay.concurrency,
        pageBytes: Math.floor(settings.backpressure.soft / 2),
      },
    );
    this.reauth = new ReauthSweep(parts.recheck, metrics);
    this.context = {
      index: this.index,
      history: this.history,
      owners,
      scheduler: new FlushScheduler(),
      frames,
      limits: settings.limits,
      backpressure: settings.backpressure,
      events,
      metrics,
      backedUp: new Set(),
      onClosed: (c) => this.connections.delete(c),
    };
  }

  /**
   * Starts taking events from the bus, the heartbeat and the sweeps; the timers never keep the
   * process up.
   */
  async start(): Promise<void> {
    await this.bus.start((events) => this.delivery.take(events));
    const { settings } = this;
    this.timers.push(
      setInterval(() => {
        for (const connection of this.connections) connection.ping();
      }, settings.heartbeat.intervalMs).unref(),
      // A backed-up socket may get no new frame to notice it by: sweep, so that it is cut within
      // a second of its limit.
      setInterval(
        () => {
          const now = performance.now();
          for (const connection of this.context.backedUp) connection.checkStalled(now);
        },
        Math.min(SWEEP_MS, settings.backpressure.timeoutMs / 2),
      ).unref(),
      setInterval(() => void this.reauthenticate(), settings.reauth.intervalMs).unref(),
    );
  }

  /**
   * A new socket, authenticated as `principal`; `request` (the upgrade request) is kept only when
   * open sockets are re-checked by their request; `place`, under the connection limits, is given
   * back once the socket is closed.
   */
  attach(socket: ClientSocket, principal: Principal, log: Logger, request: unknown, place?: Place): ClientConnection {
    const kept = this.recheck.by === 'request' ? request : undefined;
    const connection = new ClientConnection(socket, principal, log, kept, this.context, place);
    this.connections.add(connection);
    return connection;
  }

  /** Authenticates every open socket again, a few at a time; one sweep at a time. */
  reauthenticate(): Promise<void> {
    return this.reauth.sweep(this.connections);
  }

  listening(): boolean {
    return this.bus.listening();
  }

  heldBackSeconds(): number {
    return this.bus.heldBackSeconds();
  }

  /** A logged event the bus could not read or check: reported like any undeliverable one. */
  dropped(reason: DropReason, cursor: string, error: unknown): void {
    this.delivery.dropped(reason, cursor, error);
  }

  /** Open sockets and the index's sizes. */
  stats(): { connections: number; tasks: number; outputs: number; ownersAll: number; adminsAll: number } {
    return { connections: this.connections.size, ...this.index.stats() };
  }

  /** Subscriptions held by open sockets, by kind (read at scrape time). */
  subscriptionCounts(): { task: number; all: number; output: number } {
    const counts = { task: 0, all: 0, output: 0 };
    for (const c of this.connections) {
      counts.task += c.updates?.size ?? 0;
      counts.output += c.outputs?.size ?? 0;
      if (c.all) counts.all++;
    }
    return counts;
  }

  /**
   * Closes every socket with 1001 and waits for their close handshakes, at most `timeoutMs`;
   * whatever is left then is cut.
   */
  async shutdown(timeoutMs: number): Promise<void> {
    for (const timer of this.timers.splice(0)) clearInterval(timer);
    const sockets = [...this.connections].map((c) => {
      c.close(CloseCode.GOING_AWAY, 'server shutting down');
      return c.socket;
    });
    if (sockets.length === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(sockets.map((s) => s.gone())),
      new Promise((resolve) => {
        timer = setTimeout(resolve, timeoutMs);
      }),
    ]);
    clearTimeout(timer);
    for (const socket of sockets) socket.terminate();
  }

  /** After the sockets: the bus's own connections and timers. */
  async stopBus(): Promise<void> {
    await this.bus.stop();
  }
}
