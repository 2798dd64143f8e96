/**
 * The writer: logs published events. JS-API publishes of one loop turn are written together in
 * one statement (fewer round trips under load), each batch bounded by `publishTimeoutMs`; a
 * publish inside a caller's transaction is written there at once. Its state is the queue.
 */
import type { Sql, TransactionSql } from 'postgres';
import { MeshBusUnavailableError, MeshPublishError } from '../../errors.js';
import type { PostgresOptions, TasksOptions } from '../../options.js';
import type { BusEntry } from '../bus.js';
import { within } from '../../core/deadline.js';
import { isRefusedData } from './errors.js';
import { NOTICE_BODY_BYTES, type NoticeKey } from './notice.js';
import { cursorOf } from './cursor.js';
import { CHANNEL, qualified, quoteIdentifier, quoteTable } from './schema.js';

export interface WriterOptions extends Pick<PostgresOptions, 'publishTimeoutMs' | 'schema'> {
  /** Where a publish that names no owner finds it, in the same statement as the write (undefined: it names one). */
  tasks: TasksOptions | undefined;
}

/** PostgreSQL's `text` type: JSON goes as text and is cast in SQL (a `json` parameter would be encoded twice). */
const TEXT = 25;

export class Writer {
  /** JS-API publishes of this loop turn, written together in one statement. */
  private queue: { entry: BusEntry; resolve: (cursor: string) => void; reject: (error: Error) => void }[] = [];
  private writing = false;

  constructor(
    private readonly sql: Sql<any>,
    private readonly options: WriterOptions,
    /** Signs the notices; without it (a standalone writer, as bench/run.ts seeds with), bare wake-ups. */
    private readonly key?: NoticeKey,
  ) {}

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

  /**
   * Inserts `entries` in order in one statement, each with its owner: the one its publisher gave,
   * or else read from the tasks table in the same statement, i.e. as of the publisher's commit
   * (no cache decides it). JSON travels as text, so that a NUL inside a string stays escaped.
   */
  private async insert(sql: Sql<any>, entries: readonly BusEntry[]): Promise<string[]> {
    // Columns as text arrays, each payload cast to json on its own: PostgreSQL's JSON operators
    // cannot reach into a document that holds an escaped NUL, but a cast keeps it.
    const column = (value: (entry: BusEntry) => string | null) => sql.array(entries.map(value) as never, TEXT);
    const { tasks, schema } = this.options;
    // Names quoted here rather than by sql(name): a host's column transform must not rename them.
    const name = (quoted: string) => sql.unsafe(quoted);
    const settled =
      tasks === undefined
        ? sql`SELECT i.n, i.kind, i.task_id, i.owner_id, i.owner_given, i.payload FROM input i`
        : sql`SELECT i.n, i.kind, i.task_id, CASE WHEN i.owner_given THEN i.owner_id ELSE t.${name(quoteIdentifier(tasks.ownerColumn))}::uuid END, true, i.payload
              FROM input i LEFT JOIN ${name(quoteTable(tasks.table))} t ON NOT i.owner_given AND t.${name(quoteIdentifier(tasks.idColumn))} = i.task_id`;
    const log = name(qualified(schema, 'mesh_event_log'));
    // One NOTIFY per statement: a signed notice with the rows (see notice.ts for when a reader may
    // use it instead of a read), or a bare wake-up when it must not be used or cannot carry them.
    const pads = this.key?.signing();
    const payloads = entries.map((e) => JSON.stringify(payloadOf(e)));
    // A batch whose payloads alone would not fit builds no notice at all (a burst under load).
    const fits = pads !== undefined && payloads.reduce((bytes, p) => bytes + p.length, 0) <= NOTICE_BODY_BYTES;
    const notice = pads
      ? sql`CASE WHEN b.body IS NOT NULL AND pg_snapshot_xmin(pg_current_snapshot()) >= b.txid AND octet_length(b.body) <= ${NOTICE_BODY_BYTES}
          THEN encode(sha256(${pads.outer}::bytea || sha256(${pads.inner}::bytea || convert_to(b.body, 'UTF8'))), 'hex') || b.body
          ELSE '' END`
      : sql`''`;
    // The cursors are formatted here from the log's id, read in the same statement: the SQL
    // function mesh_log_cursor, called per row, costs a plan of its own each time.
    const [row] = await sql<{ log_id: string; txid: string; ids: string[] }[]>`
      WITH input AS (
        SELECT r.n, r.kind, r.task_id::uuid AS task_id, r.owner_id::uuid AS owner_id, r.owner_given::boolean AS owner_given, r.payload::json AS payload
        FROM unnest(
          ${column((e) => e.kind)}::text[], ${column((e) => e.event.taskId)}::text[], ${column((e) => e.event.ownerId ?? null)}::text[],
          ${column((e) => String(e.event.ownerId !== undefined))}::text[], ${sql.array(payloads as never, TEXT)}::text[]
        ) WITH ORDINALITY AS r(kind, task_id, owner_id, owner_given, payload, n)),
      logged AS (
        INSERT INTO ${log} (kind, task_id, owner_id, owner_given, payload)
        SELECT s.kind, s.task_id, s.owner_id, s.owner_given, s.payload FROM (${settled}) AS s(n, kind, task_id, owner_id, owner_given, payload)
        ORDER BY s.n
        RETURNING txid, id, kind, task_id, owner_id, owner_given, payload, created_at),
      batch AS (
        -- json, not text[]: a host's client may not know array types (fetch_types: false).
        SELECT min(l.txid) AS txid, min(l.id) AS first, json_agg(l.id::text ORDER BY l.id) AS ids,
               json_agg(json_build_array(l.id::text, l.kind, l.task_id, l.owner_id, l.owner_given, l.payload,
                                         (extract(epoch FROM l.created_at) * 1000)::float8) ORDER BY l.id) FILTER (WHERE ${fits}) AS rows
        FROM logged l),
      -- Materialized: the body is used three times below, and must be built (and its prev looked up) once.
      signed AS MATERIALIZED (
        SELECT a.txid, a.ids, CASE WHEN ${fits} THEN json_build_object('txid', a.txid::text, 'prev', (
            -- The newest row before this statement's (the log's own order, off its primary key).
            SELECT json_build_array(p.txid::text, p.id::text) FROM ${log} p
            WHERE (p.txid, p.id) < (a.txid, a.first) ORDER BY p.txid DESC, p.id DESC LIMIT 1),
          'rows', a.rows)::text END AS body
        FROM batch a)
      SELECT m.log_id, b.txid::text, b.ids, pg_notify(${CHANNEL}, ${notice})
      FROM signed b, ${name(qualified(schema, 'mesh_event_log_meta'))} m`;
    return row!.ids.map((id) => cursorOf(row!.log_id, row!.txid, id));
  }

  private async writeIn(tx: TransactionSql<any>, entry: BusEntry): Promise<string> {
    try {
      const [cursor] = await this.insert(tx as unknown as Sql<any>, [entry]);
      return cursor!;
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
      const outcome = await this.bounded(
        this.insert(
          this.sql,
          batch.map((item) => item.entry),
        ),
      );
      if (outcome.ok) {
        batch.forEach((item, i) => item.resolve(outcome.rows[i]!));
      } else if (batch.length > 1 && isRefusedData(outcome.error)) {
        for (const item of batch) {
          const one = await this.bounded(this.insert(this.sql, [item.entry]));
          if (one.ok) item.resolve(one.rows[0]!);
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
  private bounded<T>(statement: Promise<T>): Promise<{ ok: true; rows: T } | { ok: false; error: unknown }> {
    const { publishTimeoutMs } = this.options;
    return within(statement, publishTimeoutMs, `the event log did not answer within ${publishTimeoutMs} ms`).then(
      (rows) => ({ ok: true, rows }) as const,
      (error: unknown) => ({ ok: false, error }) as const,
    );
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
