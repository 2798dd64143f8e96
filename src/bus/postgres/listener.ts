/**
 * The LISTEN connection: hears the NOTIFY that wakes the reader, and its own heartbeat, so that a
 * connection gone silent is noticed and replaced. A wake-up, or a notice the reader may take rows
 * from instead of a read: the log is read by polling too, so a lost NOTIFY or a dead connection
 * costs latency, never events. Its state is the connection
 * and when it last heard anything.
 *
 * The LISTEN connection needs a session of its own, so it is opened with `directSql`'s options:
 * behind a transaction-mode pooler it would hear nothing (see `pooler.ts`). Its heartbeat is sent
 * through `sql`, another session, so that hearing it proves notifications reach the connection.
 */
import { randomBytes } from 'node:crypto';
import type { FastifyBaseLogger } from 'fastify';
import postgres, { type Options, type Sql } from 'postgres';
import type { PostgresOptions } from '../../options.js';
import { MeshOptionsError } from '../../errors.js';
import { CHANNEL } from './schema.js';

export interface ListenerOptions extends Pick<PostgresOptions, 'listenTimeoutMs'> {
  /** Called when the LISTEN connection is back after it dropped or went silent. */
  onListenerRestarted?: () => void;
}

/** What the listener wakes: the reader. */
export interface Wakeable {
  /** A NOTIFY came, with its payload: a notice with rows (`notice.ts`), or else what the next read finds was announced. */
  announce(payload?: string): void;
  wake(): void;
}

export class Listener {
  /** The client that holds this instance's LISTEN connection. */
  private listener: Sql<any> | undefined;
  /** When the current LISTEN connection last heard anything (undefined: not yet). */
  private lastHeard: number | undefined;
  /** When the current LISTEN connection was opened: a new one gets `listenTimeoutMs` to hear. */
  private openedAt = performance.now();
  /** Waiting for the next heartbeat (`confirm`). */
  private heartbeatWaiters: (() => void)[] = [];
  private readonly heartbeatChannel = `${CHANNEL}_hb_${randomBytes(6).toString('hex')}`;
  private stopped = false;

  constructor(
    /** Sends the heartbeat. */
    private readonly sql: Sql<any>,
    /** Whose options the LISTEN connection is opened with: a session, not a pooler's. */
    private readonly directSql: Sql<any>,
    private readonly options: ListenerOptions,
    private readonly log: FastifyBaseLogger,
    private readonly reader: Wakeable,
  ) {}

  /** Heard within `listenTimeoutMs` on the current connection: a new connection is not listening until it hears. */
  listening(): boolean {
    return (
      !this.stopped &&
      this.listener !== undefined &&
      this.lastHeard !== undefined &&
      performance.now() - this.lastHeard <= this.options.listenTimeoutMs
    );
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
      ...this.directSql.options,
      max: 1,
      idle_timeout: null,
      max_lifetime: null,
      fetch_types: false,
      onnotice: () => {},
    } as unknown as Options<any>);
    let listening = false;
    const onNotify = (payload: string) => {
      if (this.listener === listener) this.lastHeard = performance.now();
      this.reader.announce(payload);
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
        if (this.listener !== listener) return;
        this.lastHeard = performance.now();
        for (const resolve of this.heartbeatWaiters.splice(0)) resolve();
      });
    } catch (error) {
      await listener.end({ timeout: 0 }).catch(() => {});
      throw error;
    }
    this.listener = listener;
    this.lastHeard = undefined;
    this.openedAt = performance.now();
  }

  /**
   * At start: the LISTEN connection hears its heartbeat, sent through `sql`, within
   * `listenTimeoutMs`; else the bus refuses to start. On a pooler's connection it never would.
   */
  async confirm(): Promise<void> {
    const { listenTimeoutMs } = this.options;
    let timer: NodeJS.Timeout | undefined;
    const heard = new Promise<boolean>((resolve) => {
      this.heartbeatWaiters.push(() => resolve(true));
      timer = setTimeout(() => resolve(false), listenTimeoutMs);
    });
    try {
      await this.sql.notify(this.heartbeatChannel, '');
      if (!(await heard)) {
        throw new MeshOptionsError(
          `the LISTEN connection did not hear its own notification within ${listenTimeoutMs} ms (postgres.listenTimeoutMs): ` +
            'it must connect to PostgreSQL directly, not through a transaction-mode pooler, where notifications never reach it; ' +
            'pass "directSql", a client connected directly (it defaults to "sql")',
        );
      }
    } finally {
      clearTimeout(timer);
      this.heartbeatWaiters = [];
    }
  }

  /** A LISTEN connection that does not hear its own heartbeat is replaced; polling covers the gap. */
  async check(): Promise<void> {
    if (this.stopped) return;
    // Silent since it last heard, or since it was opened (a replacement is tried once per timeout).
    const since = Math.max(this.lastHeard ?? 0, this.openedAt);
    if (performance.now() - since > this.options.listenTimeoutMs) {
      this.log.warn('the LISTEN connection heard nothing, not even its own heartbeat; listening again on a new one');
      this.openedAt = performance.now();
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
