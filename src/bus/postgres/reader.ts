/**
 * The read loop: reads the log on from this instance's position, in (txid, id) order, and hands
 * each new event to the sink once. It reads only below the oldest transaction still running
 * (`pg_snapshot_xmin`): a publisher that commits after a later one is never skipped, and rows
 * that wait behind a running transaction are "held back" and read again soon. Its state is the
 * position, the one read at a time, and how long rows have been held back.
 */
import type { FastifyBaseLogger } from 'fastify';
import type { Sql } from 'postgres';
import type { PostgresOptions } from '../../options.js';
import type { BusSink, LoggedEvent } from '../bus.js';
import { after, type Cursors, type Position } from './cursor.js';
import type { Wakeable } from './listener.js';
import type { Notice, NoticeKey } from './notice.js';
import { toLogged, type Row, type RowOptions } from './rows.js';
import { logTables } from './schema.js';

export interface ReaderOptions extends Pick<PostgresOptions, 'pollIntervalMs' | 'schema'>, RowOptions {
  /** Called when a read stops at events that wait behind a transaction still running. */
  onHeldBack?: () => void;
  /** Called after each read: the age of the newest event read (0: none), and whether no wake-up had announced them. */
  onRead?: (lagSeconds: number, caughtUp: boolean) => void;
}

const READ_BATCH = 1000;
/** Re-read soon when rows wait behind a running transaction: 10 ms, doubling up to the poll interval. */
const HELD_BACK_FIRST_MS = 10;

export class Reader implements Wakeable {
  private position: Position = { txid: 0n, id: 0n };
  private sink: BusSink | undefined;
  private stopped = false;
  private reading: Promise<void> | undefined;
  private readAgain = false;
  private heldBackTimer: NodeJS.Timeout | undefined;
  private heldBackDelay = HELD_BACK_FIRST_MS;
  /** A NOTIFY came since the last read began: what it finds was announced, not caught up. */
  private announced = false;
  /** Since when committed events have been waiting behind a running transaction (0: none). */
  private heldBackSince = 0;
  /** Notices heard while a read was under way, in the order heard: taken, or found read, after it. */
  private notices: Notice[] = [];

  private readonly tables: ReturnType<typeof logTables>;

  constructor(
    private readonly sql: Sql<any>,
    private readonly cursors: Cursors,
    private readonly options: ReaderOptions,
    private readonly log: FastifyBaseLogger,
    private readonly key: NoticeKey,
  ) {
    this.tables = logTables(this.options.schema);
  }

  /** Takes its position at the log's head; `sink` gets every event after it. */
  async start(sink: BusSink): Promise<void> {
    // Start at the newest event every reader can already see: what comes after is new to us.
    const [last] = await this.sql<{ txid: string; id: string }[]>`
      SELECT txid::text, id::text FROM ${this.sql.unsafe(this.tables.log)}
      -- Qualified below: a bare name would sort by the text column of the same name in the output.
      WHERE txid < pg_snapshot_xmin(pg_current_snapshot())
      ORDER BY mesh_event_log.txid DESC, mesh_event_log.id DESC LIMIT 1`;
    if (last) this.position = { txid: BigInt(last.txid), id: BigInt(last.id) };
    this.sink = sink;
  }

  /** From now on: no new read, no held-back retry. */
  halt(): void {
    this.stopped = true;
    clearTimeout(this.heldBackTimer);
  }

  /** The read under way, if any: settles once it is over. */
  idle(): Promise<void> | undefined {
    return this.reading;
  }

  head(): string {
    return this.cursors.format(this.position.txid, this.position.id);
  }

  heldBackSeconds(): number {
    return this.heldBackSince === 0 ? 0 : (performance.now() - this.heldBackSince) / 1000;
  }

  announce(payload = ''): void {
    const notice = payload === '' ? undefined : this.key.open(payload);
    if (notice && !this.stopped && this.sink) {
      this.notices.push(notice);
      if (!this.reading) this.takeNotices();
      return;
    }
    this.announced = true;
    this.wake();
  }

  wake(): void {
    if (this.stopped || !this.sink) return;
    if (this.reading) {
      this.readAgain = true;
      return;
    }
    this.reading = this.read().finally(() => {
      this.reading = undefined;
      this.takeNotices();
      if (this.readAgain && !this.reading) {
        this.readAgain = false;
        this.wake();
      }
    });
  }

  /**
   * Hands on the rows of the notices heard, in order, each only when it starts right at this
   * reader's position (notice.ts says why nothing can come between), skipping those a read has
   * already passed. The first that does not fit starts a read, which finds its rows in the log;
   * the notices after it wait for that read. Never while a read is under way: the read would hand
   * the same rows on again.
   */
  private takeNotices(): void {
    while (this.notices.length > 0 && !this.reading && !this.stopped) {
      const notice = this.notices.shift()!;
      if (!after(notice.last, this.position)) continue;
      if (after(notice.prev, this.position) || after(this.position, notice.prev)) {
        this.announced = true;
        this.wake();
        return;
      }
      const events: LoggedEvent[] = [];
      for (const row of notice.rows) {
        const logged = toLogged(row, this.cursors, this.options);
        if (logged) events.push(logged);
      }
      this.position = notice.last;
      if (events.length > 0) this.handOn(events);
      const newest = notice.rows.at(-1)!.published_ms;
      this.options.onRead?.(newest === undefined ? 0 : Math.max(0, Date.now() - newest) / 1000, false);
    }
  }

  private handOn(events: LoggedEvent[]): void {
    // The hub never rejects; were it to, one batch must not take the process down.
    this.sink!(events).catch((error: unknown) => this.log.error({ err: error }, 'handing events to the sockets failed'));
  }

  /** Reads and hands on everything new, batch by batch, up to what every reader can see. */
  private async read(): Promise<void> {
    const announced = this.announced;
    this.announced = false;
    let found = 0;
    let newest: number | undefined;
    try {
      for (;;) {
        const rows = await this.sql<(Row & { horizon: string })[]>`
          SELECT h.horizon::text AS horizon, e.txid::text, e.id::text, e.kind, e.task_id::text, e.owner_id::text, e.owner_given, e.payload,
                 (extract(epoch FROM e.created_at) * 1000)::float8 AS published_ms
          FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS horizon) h
          LEFT JOIN LATERAL (
            SELECT * FROM ${this.sql.unsafe(this.tables.log)}
            WHERE (txid, id) > (${this.position.txid.toString()}::xid8, ${this.position.id.toString()}::bigint)
            ORDER BY txid, id LIMIT ${READ_BATCH}
          ) e ON true`;
        if (this.stopped) return;
        const horizon = BigInt(rows[0]!.horizon);
        const events: LoggedEvent[] = [];
        let heldBack = false;
        for (const row of rows) {
          if (row.txid === null) break;
          // A transaction older than this row is still running: it may yet add rows before it.
          if (BigInt(row.txid) >= horizon) {
            heldBack = true;
            break;
          }
          this.position = { txid: BigInt(row.txid), id: BigInt(row.id) };
          const logged = toLogged(row, this.cursors, this.options);
          if (logged) events.push(logged);
        }
        if (events.length > 0) {
          found += events.length;
          newest = events.at(-1)!.publishedAt;
          this.handOn(events);
        }
        if (heldBack) {
          // Since the first read that found them: about when they committed, as a commit wakes the readers.
          if (this.heldBackSince === 0) this.heldBackSince = performance.now();
          this.options.onHeldBack?.();
          this.scheduleHeldBack();
        } else {
          this.heldBackSince = 0;
          this.heldBackDelay = HELD_BACK_FIRST_MS;
        }
        if (heldBack || rows.length < READ_BATCH) {
          this.options.onRead?.(newest === undefined ? 0 : Math.max(0, Date.now() - newest) / 1000, found > 0 && !announced);
          return;
        }
      }
    } catch (error) {
      // The next wake-up or poll tries again from the same position: nothing is skipped.
      this.log.warn({ err: error }, 'reading mesh_event_log failed; retrying at the next poll');
    }
  }

  private scheduleHeldBack(): void {
    if (this.heldBackTimer) return;
    this.heldBackTimer = setTimeout(() => {
      this.heldBackTimer = undefined;
      this.wake();
    }, this.heldBackDelay).unref();
    this.heldBackDelay = Math.min(this.heldBackDelay * 2, this.options.pollIntervalMs);
  }
}
