/**
 * The PostgreSQL bus. Every event is a row of `mesh_event_log`; a NOTIFY only wakes the readers.
 * Each instance reads the log in (txid, id) order on its own, below the oldest transaction still
 * running (`pg_snapshot_xmin`), so a publisher that commits after a later one is never skipped,
 * and after a lost LISTEN connection, a missed wake-up or a restart it reads on from where it was.
 */
import { randomBytes } from 'node:crypto';
import type { FastifyBaseLogger } from 'fastify';
import pTimeout from 'p-timeout';
import postgres, { type Options, type Sql, type TransactionSql } from 'postgres';
import { MeshBusUnavailableError, MeshPublishError } from '../errors.js';
import type { ResolvedOptions } from '../options.js';
import { toTaskOutputEvent, toTaskUpdateEvent } from '../protocol/codec.js';
import type { BusEntry, BusSink, EventBus, LoggedEvent, PageSize, ReplayPage, ReplayStream } from './bus.js';
import { isRefusedData } from './postgres-errors.js';
import { CHANNEL, migrateEventLog, quoteTable } from './postgres-schema.js';

export interface PostgresBusOptions
  extends Pick<
    ResolvedOptions,
    'migrate' | 'retentionMs' | 'retentionPerTask' | 'pruneIntervalMs' | 'pollIntervalMs' | 'listenTimeoutMs' | 'publishTimeoutMs'
  > {
  /**
   * Where a publish that names no owner finds it, in the same statement as the write; undefined
   * when the hub settles owners itself (`resolveOwners`) before publishing.
   */
  tasksTable: string | undefined;
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

/** A position in the log. */
interface Position {
  txid: bigint;
  id: bigint;
}

interface Row {
  published_ms?: number;
  txid: string;
  id: string;
  kind: 'update' | 'output';
  task_id: string;
  owner_id: string | null;
  owner_given: boolean;
  payload: Record<string, unknown>;
}

const READ_BATCH = 1000;
/** PostgreSQL's `text` type: JSON goes as text and is cast in SQL (a `json` parameter would be encoded twice). */
const TEXT = 25;
const PRUNE_BATCH = 5000;
const PRUNE_LOCK = 0x6d657368_7072756en; // "meshprun"
/** Re-read soon when rows wait behind a running transaction: 10 ms, doubling up to the poll interval. */
const HELD_BACK_FIRST_MS = 10;

const CURSOR = /^([0-9a-f]{8})\.([0-9]{1,20})\.([0-9]{1,19})$/;

const after = (a: Position, b: Position) => a.txid > b.txid || (a.txid === b.txid && a.id > b.id);

export class PostgresBus implements EventBus {
  private logId = '';
  private position: Position = { txid: 0n, id: 0n };
  private sink: BusSink | undefined;
  private stopped = false;
  private reading: Promise<void> | undefined;
  private readAgain = false;
  private timers: NodeJS.Timeout[] = [];
  private heldBackTimer: NodeJS.Timeout | undefined;
  private heldBackDelay = HELD_BACK_FIRST_MS;
  /** The client that holds this instance's LISTEN connection. */
  private listener: Sql<any> | undefined;
  private lastHeard = performance.now();
  /** A NOTIFY came since the last read began: what it finds was announced, not caught up. */
  private announced = false;
  private readonly heartbeatChannel = `${CHANNEL}_hb_${randomBytes(6).toString('hex')}`;
  /** Since when committed events have been waiting behind a running transaction (0: none). */
  private heldBackSince = 0;
  /** JS-API publishes of this loop turn, written together in one statement. */
  private queue: { entry: BusEntry; resolve: (cursor: string) => void; reject: (error: Error) => void }[] = [];
  private writing = false;

  constructor(
    private readonly sql: Sql<any>,
    private readonly options: PostgresBusOptions,
    private readonly log: FastifyBaseLogger,
  ) {}

  async start(sink: BusSink): Promise<void> {
    if (this.options.migrate) await migrateEventLog(this.sql, { tasksTable: this.options.tasksTable });
    const [meta] = await this.sql<{ log_id: string }[]>`SELECT log_id FROM mesh_event_log_meta`;
    if (!meta) throw new Error('mesh_event_log_meta is empty: run the migrations (option migrate)');
    this.logId = meta.log_id;
    // Start at the newest event every reader can already see: what comes after is new to us.
    const [last] = await this.sql<{ txid: string; id: string }[]>`
      SELECT txid::text, id::text FROM mesh_event_log
      -- Qualified below: a bare name would sort by the text column of the same name in the output.
      WHERE txid < pg_snapshot_xmin(pg_current_snapshot())
      ORDER BY mesh_event_log.txid DESC, mesh_event_log.id DESC LIMIT 1`;
    if (last) this.position = { txid: BigInt(last.txid), id: BigInt(last.id) };
    this.sink = sink;
    await this.listen();
    const { pollIntervalMs, listenTimeoutMs, pruneIntervalMs } = this.options;
    this.timers.push(
      // The floor under every wake-up: a lost NOTIFY or a dead LISTEN connection costs latency only.
      setInterval(() => this.wake(), pollIntervalMs).unref(),
      setInterval(() => void this.checkListener(), Math.max(1, Math.floor(listenTimeoutMs / 2))).unref(),
      setInterval(() => void this.prune(), pruneIntervalMs).unref(),
    );
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const timer of this.timers.splice(0)) clearInterval(timer);
    clearTimeout(this.heldBackTimer);
    await this.reading;
    await this.listener?.end({ timeout: 1 }).catch(() => {});
    this.listener = undefined;
  }

  head(): string {
    return this.cursor(this.position);
  }

  listening(): boolean {
    return !this.stopped && this.listener !== undefined && performance.now() - this.lastHeard <= this.options.listenTimeoutMs;
  }

  heldBackSeconds(): number {
    return this.heldBackSince === 0 ? 0 : (performance.now() - this.heldBackSince) / 1000;
  }

  publish(entry: BusEntry, tx?: TransactionSql<any>): Promise<string> {
    if (tx) return this.writeIn(tx, entry);
    return new Promise((resolve, reject) => {
      this.queue.push({ entry, resolve, reject });
      if (!this.writing) {
        this.writing = true;
        setImmediate(() => void this.write());
      }
    });
  }

  async replay(stream: ReplayStream, start: string, page: PageSize): Promise<ReplayPage> {
    const from = this.parse(start);
    if (!from) return { resync: 'unknownCursor' };
    // One snapshot for the pruning check and the read: a prune that commits in between cannot
    // remove rows after `after` unnoticed.
    return this.sql.begin('isolation level repeatable read read only', async (transaction): Promise<ReplayPage> => {
      const tx = transaction as unknown as Sql<any>;
      const [state] = await tx<{ pruned_txid: string; pruned_id: string; task_txid: string | null; task_id: string | null; head_txid: string | null; head_id: string | null }[]>`
        SELECT m.pruned_txid::text, m.pruned_id::text, t.pruned_txid::text AS task_txid, t.pruned_id::text AS task_id,
               h.txid::text AS head_txid, h.id::text AS head_id
        FROM mesh_event_log_meta m
        LEFT JOIN LATERAL (${this.prunedFor(tx, stream)}) t ON true
        LEFT JOIN LATERAL (SELECT txid, id FROM mesh_event_log ORDER BY txid DESC, id DESC LIMIT 1) h ON true`;
      const pruned = { txid: BigInt(state!.pruned_txid), id: BigInt(state!.pruned_id) };
      if (after(pruned, from)) return { resync: 'expired' };
      if (state!.task_txid !== null && after({ txid: BigInt(state!.task_txid), id: BigInt(state!.task_id!) }, from)) return { resync: 'expired' };
      const head = state!.head_txid === null ? pruned : { txid: BigInt(state!.head_txid), id: BigInt(state!.head_id!) };
      if (after(from, head) && after(from, pruned)) return { resync: 'unknownCursor' };
      const events = this.eventsOf(tx, stream, from);
      if (page.limit !== undefined) {
        const [count] = await tx<{ n: number }[]>`
          SELECT count(*)::int AS n FROM (SELECT 1 FROM ${events} LIMIT ${page.limit + 1}) c`;
        if (count!.n > page.limit) return { resync: 'tooFarBehind' };
      }
      // The page stops at the row that takes it past `bytes`: it always holds at least one.
      const rows = await tx<(Row & { fetched: number })[]>`
        WITH page AS (
          SELECT txid, id, kind, task_id, owner_id, owner_given, payload, octet_length(payload::text) AS size
          FROM ${events}
          -- Qualified: a bare name would sort by the text column of the same name in the output.
          ORDER BY e.txid, e.id LIMIT ${page.rows}),
        sized AS (SELECT *, sum(size) OVER (ORDER BY txid, id) - size AS before, count(*) OVER () AS fetched FROM page)
        SELECT txid::text, id::text, kind, task_id::text, owner_id::text, owner_given, payload, fetched::int
        FROM sized WHERE before < ${page.bytes} ORDER BY sized.txid, sized.id`;
      const last = rows.at(-1);
      return {
        events: rows.map((row) => this.toLogged(row)).filter((e): e is LoggedEvent => e !== undefined),
        last: last ? `${this.logId}.${last.txid}.${last.id}` : start,
        more: last !== undefined && (rows.length < last.fetched || last.fetched === page.rows),
      };
    });
  }

  compare(a: string, b: string): number {
    const x = this.parse(a);
    const y = this.parse(b);
    if (!x || !y) return 0;
    return after(x, y) ? 1 : after(y, x) ? -1 : 0;
  }

  private cursor(p: Position): string {
    return `${this.logId}.${p.txid}.${p.id}`;
  }

  private parse(cursor: string): Position | undefined {
    const match = CURSOR.exec(cursor);
    if (!match || match[1] !== this.logId) return undefined;
    const txid = BigInt(match[2]!);
    const id = BigInt(match[3]!);
    return txid < 2n ** 64n && id < 2n ** 63n ? { txid, id } : undefined;
  }

  /**
   * The events of `stream` after `from` that every reader can see, as a source `e` read in
   * (txid, id) order off an index: one tenant's `subscribeAll` reads its own events, never the
   * whole log (its events and those logged without an owner are two index ranges, merged).
   */
  private eventsOf(sql: Sql<any>, stream: ReplayStream, from: Position) {
    const after = sql`(txid, id) > (${from.txid.toString()}::xid8, ${from.id.toString()}::bigint)
      AND txid < pg_snapshot_xmin(pg_current_snapshot())`;
    if (stream.kind !== 'all') return sql`mesh_event_log e WHERE task_id = ${stream.taskId}::uuid AND kind = ${stream.kind} AND ${after}`;
    if (stream.ownerId === null) return sql`mesh_event_log e WHERE kind = 'update' AND ${after}`;
    return sql`(
        SELECT * FROM mesh_event_log WHERE kind = 'update' AND owner_id = ${stream.ownerId}::uuid AND ${after}
        UNION ALL
        SELECT * FROM mesh_event_log WHERE kind = 'update' AND NOT owner_given AND ${after}
      ) e`;
  }

  /** The newest per-task pruning that could have removed events of `stream`. */
  private prunedFor(sql: Sql<any>, stream: ReplayStream) {
    const where =
      stream.kind !== 'all'
        ? sql`task_id = ${stream.taskId}::uuid`
        : stream.ownerId === null
          ? sql`true`
          : sql`(owner_id = ${stream.ownerId}::uuid OR owner_id IS NULL)`;
    return sql`SELECT pruned_txid, pruned_id FROM mesh_event_log_pruned_tasks WHERE ${where} ORDER BY pruned_txid DESC, pruned_id DESC LIMIT 1`;
  }

  /** A row as an event, checked as `publish` checks one: the log is written by SQL callers too. */
  private toLogged(row: Row): LoggedEvent | undefined {
    const cursor = `${this.logId}.${row.txid}.${row.id}`;
    const notification = { ...row.payload, taskId: row.task_id, ...(row.owner_given ? { ownerId: row.owner_id } : {}) };
    try {
      return row.kind === 'update'
        ? { kind: 'update', event: toTaskUpdateEvent(notification), cursor, publishedAt: row.published_ms }
        : { kind: 'output', event: toTaskOutputEvent(notification), cursor, publishedAt: row.published_ms };
    } catch (error) {
      this.options.onDropped?.('invalid', cursor, error);
      return undefined;
    }
  }

  // Writing.

  /**
   * Inserts `entries` in order in one statement, each with its owner: the one its publisher gave,
   * or else read from the tasks table in the same statement, i.e. as of the publisher's commit
   * (no cache decides it). JSON travels as text, so that a NUL inside a string stays escaped.
   */
  private insert(sql: Sql<any>, entries: readonly BusEntry[]) {
    // Columns as text arrays, each payload cast to json on its own: PostgreSQL's JSON operators
    // cannot reach into a document that holds an escaped NUL, but a cast keeps it.
    const column = (value: (entry: BusEntry) => string | null) => sql.array(entries.map(value) as never, TEXT);
    const table = this.options.tasksTable;
    const settled =
      table === undefined
        ? sql`SELECT i.n, i.kind, i.task_id, i.owner_id, i.owner_given, i.payload FROM input i`
        : sql`SELECT i.n, i.kind, i.task_id, CASE WHEN i.owner_given THEN i.owner_id ELSE t.owner_id::uuid END, true, i.payload
              FROM input i LEFT JOIN ${sql.unsafe(quoteTable(table))} t ON NOT i.owner_given AND t.id = i.task_id`;
    return sql<{ cursor: string }[]>`
      WITH input AS (
        SELECT r.n, r.kind, r.task_id::uuid AS task_id, r.owner_id::uuid AS owner_id, r.owner_given::boolean AS owner_given, r.payload::json AS payload
        FROM unnest(
          ${column((e) => e.kind)}::text[], ${column((e) => e.event.taskId)}::text[], ${column((e) => e.event.ownerId ?? null)}::text[],
          ${column((e) => String(e.event.ownerId !== undefined))}::text[], ${column((e) => JSON.stringify(payloadOf(e)))}::text[]
        ) WITH ORDINALITY AS r(kind, task_id, owner_id, owner_given, payload, n)),
      logged AS (
        INSERT INTO mesh_event_log (kind, task_id, owner_id, owner_given, payload)
        SELECT s.kind, s.task_id, s.owner_id, s.owner_given, s.payload FROM (${settled}) AS s(n, kind, task_id, owner_id, owner_given, payload)
        ORDER BY s.n
        RETURNING txid, id)
      SELECT mesh_log_cursor(txid, id) AS cursor, pg_notify(${CHANNEL}, '') FROM logged ORDER BY id`;
  }

  private async writeIn(tx: TransactionSql<any>, entry: BusEntry): Promise<string> {
    try {
      const [row] = await this.insert(tx as unknown as Sql<any>, [entry]);
      return row!.cursor;
    } catch (cause) {
      throw isRefusedData(cause) ? refused(cause) : new MeshBusUnavailableError(cause);
    }
  }

  /**
   * Writes the queued publishes in one statement, in publish order; one batch at a time, each
   * bounded by `publishTimeoutMs`. A batch the log refuses for its data is written again row by
   * row, so that one publisher's bad event never fails another's.
   */
  private async write(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.queue;
      this.queue = [];
      const outcome = await this.bounded(this.insert(this.sql, batch.map((item) => item.entry)));
      if ('rows' in outcome) {
        batch.forEach((item, i) => item.resolve(outcome.rows[i]!.cursor));
      } else if (batch.length > 1 && isRefusedData(outcome.error)) {
        for (const item of batch) {
          const one = await this.bounded(this.insert(this.sql, [item.entry]));
          if ('rows' in one) item.resolve(one.rows[0]!.cursor);
          else item.reject(isRefusedData(one.error) ? refused(one.error) : new MeshBusUnavailableError(one.error));
        }
      } else {
        const error = isRefusedData(outcome.error) ? refused(outcome.error) : new MeshBusUnavailableError(outcome.error);
        for (const item of batch) item.reject(error);
      }
    }
    this.writing = false;
  }

  /**
   * A statement's rows, or why it failed, within `publishTimeoutMs`. Past it, the statement may
   * still commit later: the publisher is told the log is out of reach, and a retry may log twice.
   */
  private bounded<T>(statement: Promise<T>): Promise<{ rows: T } | { error: unknown }> {
    const { publishTimeoutMs } = this.options;
    return pTimeout(statement, { milliseconds: publishTimeoutMs, message: `the event log did not answer within ${publishTimeoutMs} ms` }).then(
      (rows) => ({ rows }),
      (error: unknown) => ({ error }),
    );
  }

  // Reading.

  private async listen(): Promise<void> {
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
      this.announced = true;
      this.wake();
    };
    // onlisten runs after each (re)connection; the read it starts catches up whatever was missed.
    const onListen = () => {
      if (listening) this.options.onListenerRestarted?.();
      listening = true;
      this.wake();
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
  private async checkListener(): Promise<void> {
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

  private wake(): void {
    if (this.stopped || !this.sink) return;
    if (this.reading) {
      this.readAgain = true;
      return;
    }
    this.reading = this.read().finally(() => {
      this.reading = undefined;
      if (this.readAgain) {
        this.readAgain = false;
        this.wake();
      }
    });
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
            SELECT * FROM mesh_event_log
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
          const logged = this.toLogged(row);
          if (logged) events.push(logged);
        }
        if (events.length > 0) {
          found += events.length;
          newest = events.at(-1)!.publishedAt;
          // The hub never rejects; were it to, one batch must not take the process down.
          this.sink!(events).catch((error: unknown) => this.log.error({ err: error }, 'handing events to the sockets failed'));
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

  // Retention.

  /**
   * Removes events past their age or beyond the per-task count, a few thousand per statement so
   * that no transaction stays open long (a long one would hold every reader back). One instance
   * at a time, under a session advisory lock on a reserved connection.
   */
  async prune(): Promise<number> {
    if (this.stopped) return 0;
    let removed = 0;
    let reserved: Awaited<ReturnType<Sql<any>['reserve']>> | undefined;
    try {
      reserved = await this.sql.reserve();
      const [lock] = await reserved<{ locked: boolean }[]>`SELECT pg_try_advisory_lock(${PRUNE_LOCK.toString()}::bigint) AS locked`;
      if (!lock?.locked) return 0;
      try {
        const cutoff = new Date(Date.now() - this.options.retentionMs);
        for (let n = PRUNE_BATCH; n === PRUNE_BATCH && !this.stopped; ) {
          const [r] = await reserved<{ n: number }[]>`
            WITH gone AS (
              DELETE FROM mesh_event_log WHERE (txid, id) IN (
                SELECT txid, id FROM mesh_event_log WHERE created_at < ${cutoff} ORDER BY created_at LIMIT ${PRUNE_BATCH})
              RETURNING txid, id),
            newest AS (SELECT txid, id FROM gone ORDER BY txid DESC, id DESC LIMIT 1),
            moved AS (
              UPDATE mesh_event_log_meta m SET pruned_txid = newest.txid, pruned_id = newest.id FROM newest
              WHERE (newest.txid, newest.id) > (m.pruned_txid, m.pruned_id) RETURNING 1)
            SELECT count(*)::int AS n FROM gone`;
          n = r!.n;
          removed += n;
        }
        const [r] = await reserved<{ n: number }[]>`
          WITH excess AS (
            SELECT task_id FROM mesh_event_log GROUP BY task_id HAVING count(*) > ${this.options.retentionPerTask} LIMIT 100),
          doomed AS (
            SELECT e.txid, e.id FROM excess x CROSS JOIN LATERAL (
              SELECT txid, id FROM mesh_event_log WHERE task_id = x.task_id
              ORDER BY txid DESC, id DESC OFFSET ${this.options.retentionPerTask}) e),
          gone AS (
            DELETE FROM mesh_event_log l USING doomed d WHERE l.txid = d.txid AND l.id = d.id
            RETURNING l.task_id, l.owner_id, l.txid, l.id),
          marked AS (
            INSERT INTO mesh_event_log_pruned_tasks (task_id, owner_id, pruned_txid, pruned_id)
            SELECT DISTINCT ON (task_id) task_id, owner_id, txid, id FROM gone ORDER BY task_id, txid DESC, id DESC
            ON CONFLICT (task_id) DO UPDATE SET owner_id = excluded.owner_id, pruned_txid = excluded.pruned_txid, pruned_id = excluded.pruned_id
              WHERE (excluded.pruned_txid, excluded.pruned_id) > (mesh_event_log_pruned_tasks.pruned_txid, mesh_event_log_pruned_tasks.pruned_id)
            RETURNING 1)
          SELECT count(*)::int AS n FROM gone`;
        removed += r!.n;
      } finally {
        await reserved`SELECT pg_advisory_unlock(${PRUNE_LOCK.toString()}::bigint)`;
      }
    } catch (error) {
      this.log.warn({ err: error }, 'pruning mesh_event_log failed; retrying at the next round');
    } finally {
      reserved?.release();
    }
    if (removed > 0) this.options.onPruned?.(removed);
    return removed;
  }
}

/** The log refused an event for what it holds (the SQL functions' checks, PostgreSQL's own): bad input. */
function refused(cause: unknown): MeshPublishError {
  const detail = cause instanceof Error ? cause.message : String(cause);
  return Object.assign(new MeshPublishError(`the event log refused it: ${detail}`), { cause });
}

/** The event's fields other than its task and owner, which have columns of their own. */
function payloadOf({ kind, event }: BusEntry): object {
  if (kind === 'update') {
    const { version, status, updatedFields, updatedBy } = event;
    return { version, status, updatedFields, updatedBy };
  }
  const { messageType, content, toolName, toolInput, isError, costUsd, durationMs, isPartial } = event;
  return { messageType, content, toolName, toolInput, isError, costUsd, durationMs, isPartial };
}

