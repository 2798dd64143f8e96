/**
 * The PostgreSQL bus. Every event is a row of `mesh_event_log`; a NOTIFY wakes the readers, and
 * carries the rows when they fit, for a reader that stands right before them.
 * Each instance reads the log in (txid, id) order on its own, below the oldest transaction still
 * running (`pg_snapshot_xmin`), so a publisher that commits after a later one is never skipped,
 * and after a lost LISTEN connection, a missed wake-up or a restart it reads on from where it was.
 *
 * This class composes the parts, one file each under `postgres/`, each with the state it owns:
 * `cursor.ts` (the cursor format and the log's id), `writer.ts` (the batched writer), `listener.ts`
 * (the LISTEN connection and its heartbeat), `reader.ts` (the read loop), `notice.ts` (NOTIFYs
 * that carry their rows, signed, so that a reader may skip the read), `replay.ts` (pages for
 * `since`), `retention.ts` (pruning), beside `schema.ts` (tables, SQL functions), `migration.ts` (running them) and `errors.ts`.
 *
 * Two clients: what needs a server session of its own (the LISTEN connection, the pruning's
 * advisory lock, migrations) runs on `directSql`; everything else on `sql`, which may go through
 * a transaction-mode pooler. `pooler.ts` checks both at start.
 */
import type { FastifyBaseLogger } from 'fastify';
import type { Sql, TransactionSql } from 'postgres';
import type { PostgresOptions, TasksOptions } from '../options.js';
import type { BusEntry, BusSink, EventBus, PageSize, ReplayPage, ReplayStream } from './bus.js';
import { Cursors } from './postgres/cursor.js';
import { Listener } from './postgres/listener.js';
import { NoticeKey } from './postgres/notice.js';
import { checkSessions } from './postgres/pooler.js';
import { Reader } from './postgres/reader.js';
import { Replay } from './postgres/replay.js';
import { Retention } from './postgres/retention.js';
import { ensureSchema } from './postgres/migration.js';
import { Writer } from './postgres/writer.js';

/**
 * What the bus is built with: the options group `postgres` (each part takes its own options of
 * it), where owners are settled, and the callbacks the plugin reports through.
 */
export interface PostgresBusOptions extends PostgresOptions {
  /**
   * Where a publish that names no owner finds it, in the same statement as the write; undefined
   * when the hub settles owners itself (`resolveOwners`) before publishing.
   */
  tasks: TasksOptions | undefined;
  /** Whether the tickets table is part of the objects the bus needs (`tickets.enabled`). */
  tickets: boolean;
  /**
   * A client connected to PostgreSQL directly, for what needs a server session of its own (the
   * LISTEN connection, the pruning's advisory lock, migrations). Default: `sql`.
   */
  directSql?: Sql<any>;
  /** Called for each logged event this instance could not hand on (the rest go on in order). */
  onDropped?: (reason: 'unreadable' | 'invalid', cursor: string, error: unknown) => void;
  /** Called after each pruning round that removed rows. */
  onPruned?: (rows: number) => void;
  /** Called when a read stops at events that wait behind a transaction still running. */
  onHeldBack?: () => void;
  /** Called when the LISTEN connection is back after it dropped or went silent. */
  onListenerRestarted?: () => void;
  /** Called after each read: the age of the newest event read (0: none), and whether no wake-up had announced them. */
  onRead?: (lagSeconds: number, caughtUp: boolean) => void;
}

export class PostgresBus implements EventBus {
  private readonly cursors = new Cursors();
  private readonly key = new NoticeKey();
  private readonly writer: Writer;
  private readonly reader: Reader;
  private readonly listener: Listener;
  private readonly replayer: Replay;
  private readonly retention: Retention;
  private timers: NodeJS.Timeout[] = [];

  /** What needs a session runs on it: `options.directSql`, else `sql`. */
  private readonly directSql: Sql<any>;

  constructor(
    private readonly sql: Sql<any>,
    private readonly options: PostgresBusOptions,
    private readonly log: FastifyBaseLogger,
  ) {
    const directSql = (this.directSql = options.directSql ?? sql);
    // Notices carry events: only where the host said every role that may LISTEN may read them.
    this.writer = new Writer(sql, options, options.notifyRows ? this.key : undefined);
    this.reader = new Reader(sql, this.cursors, options, log, this.key);
    this.listener = new Listener(sql, directSql, options, log, this.reader);
    this.replayer = new Replay(sql, this.cursors, options);
    this.retention = new Retention(directSql, options, log);
  }

  async start(sink: BusSink): Promise<void> {
    // Before anything is written: behind a transaction-mode pooler, refuse what would lose events.
    await checkSessions(this.sql, this.directSql);
    const { schema, tasks, tickets, migrate } = this.options;
    await ensureSchema(this.directSql, {
      schema,
      tasks: tasks ?? null,
      tickets,
      migrate,
      onNewer: (version) => this.log.warn({ version, schema }, "the plugin's objects are of a newer schema version; left as they are"),
    });
    await this.cursors.load(this.sql, schema);
    await this.key.load(this.sql, schema);
    await this.reader.start(sink);
    try {
      await this.listener.listen();
      await this.listener.confirm();
    } catch (error) {
      this.reader.halt();
      this.listener.halt();
      await this.listener.close();
      throw error;
    }
    const { pollIntervalMs, listenTimeoutMs, pruneIntervalMs } = this.options;
    this.timers.push(
      // The floor under every wake-up: a lost NOTIFY or a dead LISTEN connection costs latency only.
      setInterval(() => this.reader.wake(), pollIntervalMs).unref(),
      setInterval(() => void this.listener.check(), Math.max(1, Math.floor(listenTimeoutMs / 2))).unref(),
      setInterval(() => void this.retention.prune(), pruneIntervalMs).unref(),
    );
  }

  async stop(): Promise<void> {
    this.reader.halt();
    this.listener.halt();
    this.retention.halt();
    for (const timer of this.timers.splice(0)) clearInterval(timer);
    await this.reader.idle();
    await this.listener.close();
  }

  head(): string {
    return this.reader.head();
  }

  listening(): boolean {
    return this.listener.listening();
  }

  heldBackSeconds(): number {
    return this.reader.heldBackSeconds();
  }

  publish(entry: BusEntry, tx?: TransactionSql<any>): Promise<string> {
    return this.writer.publish(entry, tx);
  }

  replay(stream: ReplayStream, start: string, page: PageSize): Promise<ReplayPage> {
    return this.replayer.page(stream, start, page);
  }

  compare(a: string, b: string): number {
    return this.cursors.compare(a, b);
  }

  /**
   * Removes events past their age or beyond the per-task count (see `postgres/retention.ts`);
   * resolves with how many. Runs on its own timer too.
   */
  prune(): Promise<number> {
    return this.retention.prune();
  }
}
