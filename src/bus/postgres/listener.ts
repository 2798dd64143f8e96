/**
 * The LISTEN connection: hears the NOTIFY that wakes the reader, and its own heartbeat, so that a
 * connection gone silent is noticed and replaced. A wake-up only: the log is read by polling too,
 * so a lost NOTIFY or a dead connection costs latency, never events. Its state is the connection
 * and when it last heard anything.
 */
import { randomBytes } from 'node:crypto';
import type { FastifyBaseLogger } from 'fastify';
import postgres, { type Options, type Sql } from 'postgres';
import type { PostgresOptions } from '../../options.js';
import { CHANNEL } from './schema.js';

export interface ListenerOptions extends Pick<PostgresOptions, 'listenTimeoutMs'> {
  /** Called when the LISTEN connection is back after it dropped or went silent. */
  onListenerRestarted?: () => void;
}

/** What the listener wakes: the reader. */
export interface Wakeable {
  /** A NOTIFY came: what the next read finds was announced. */
  announce(): void;
  wake(): void;
}

export class Listener {
  /** The client that holds this instance's LISTEN connection. */
  private listener: Sql<any> | undefined;
  private lastHeard = performance.now();
  private readonly heartbeatChannel = `${CHANNEL}_hb_${randomBytes(6).toString('hex')}`;
  private stopped = false;

  constructor(
    private readonly sql: Sql<any>,
    private readonly options: ListenerOptions,
    private readonly log: FastifyBaseLogger,
    private readonly reader: Wakeable,
  ) {}

  listening(): boolean {
    return !this.stopped && this.listener !== undefined && performance.now() - this.lastHeard <= this.options.listenTimeoutMs;
  }

  /** From now on: not listening, and no check replaces the connection. */
  halt(): void {
    this.stopped = true;
  }

  async close(): Promise<void> {
    await this.listener?.end({ timeout: 1 }).catch(() => {});
    this.listener = undefined;
  }

  async listen(): Promise<void> {
    // A client of our own, from the host's parsed options (as postgres.js builds its own LISTEN
    // client), rather than the host's `sql.listen`: that one listens again on the same connection,
    // so a connection gone silent could never be replaced. Ours still re-listens by itself after a
    // drop, and never idles out or retires, since its LISTEN would end with it.
    const listener = postgres({
      ...this.sql.options,
      max: 1,
      idle_timeout: null,
      max_lifetime: null,
      fetch_types: false,
      onnotice: () => {},
    } as unknown as Options<any>);
    let listening = false;
    const onNotify = () => {
      this.lastHeard = performance.now();
      this.reader.announce();
    };
    // onlisten runs after each (re)connection; the read it starts catches up whatever was missed.
    const onListen = () => {
      if (listening) this.options.onListenerRestarted?.();
      listening = true;
      this.reader.wake();
    };
    try {
      await listener.listen(CHANNEL, onNotify, onListen);
      await listener.listen(this.heartbeatChannel, () => {
        this.lastHeard = performance.now();
      });
    } catch (error) {
      await listener.end({ timeout: 0 }).catch(() => {});
      throw error;
    }
    this.listener = listener;
  }

  /** A LISTEN connection that does not hear its own heartbeat is replaced; polling covers the gap. */
  async check(): Promise<void> {
    if (this.stopped) return;
    if (performance.now() - this.lastHeard > this.options.listenTimeoutMs) {
      this.log.warn('the LISTEN connection heard nothing, not even its own heartbeat; listening again on a new one');
      this.lastHeard = performance.now();
      const old = this.listener;
      this.listener = undefined;
      // No goodbye on a connection that may never answer: its socket is destroyed at once.
      await old?.end({ timeout: 0 }).catch(() => {});
      try {
        await this.listen();
        this.options.onListenerRestarted?.();
      } catch (error) {
        this.log.warn({ err: error }, 'LISTEN failed; reading by polling until it works');
      }
    }
    await this.sql.notify(this.heartbeatChannel, '').catch(() => {});
  }
}
