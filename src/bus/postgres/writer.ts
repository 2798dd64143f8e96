/**
 * The writer: logs published events. JS-API publishes of one loop turn are written together in
 * one statement (fewer round trips under load), each batch bounded by `publishTimeoutMs`; a
 * publish inside a caller's transaction is written there at once. Its state is the queue.
 */
import pTimeout from 'p-timeout';
import type { Sql, TransactionSql } from 'postgres';
import { MeshBusUnavailableError, MeshPublishError } from '../../errors.js';
import type { PostgresOptions, TasksOptions } from '../../options.js';
import type { BusEntry } from '../bus.js';
import { isRefusedData } from './errors.js';
import { NOTICE_BODY_BYTES, type NoticeKey } from './notice.js';
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
  private insert(sql: Sql<any>, entries: readonly BusEntry[]) {
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
    const notice = pads
      ? sql`CASE WHEN pg_snapshot_xmin(pg_current_snapshot()) >= b.txid AND octet_length(b.body) <= ${NOTICE_BODY_BYTES}
          THEN encode(sha256(${pads.outer}::bytea || sha256(${pads.inner}::bytea || convert_to(b.body, 'UTF8'))), 'hex') || b.body
          ELSE '' END`
      : sql`''`;
    return sql<{ cursors: string[] }[]>`
      WITH input AS (
        SELECT r.n, r.kind, r.task_id::uuid AS task_id, r.owner_id::uuid AS owner_id, r.owner_given::boolean AS owner_given, r.payload::json AS payload
        FROM unnest(
          ${column((e) => e.kind)}::text[], ${column((e) => e.event.taskId)}::text[], ${column((e) => e.event.ownerId ?? null)}::text[],
          ${column((e) => String(e.event.ownerId !== undefined))}::text[], ${column((e) => JSON.stringify(payloadOf(e)))}::text[]
        ) WITH ORDINALITY AS r(kind, task_id, owner_id, owner_given, payload, n)),
      logged AS (
        INSERT INTO ${log} (kind, task_id, owner_id, owner_given, payload)
        SELECT s.kind, s.task_id, s.owner_id, s.owner_given, s.payload FROM (${settled}) AS s(n, kind, task_id, owner_id, owner_given, payload)
        ORDER BY s.n
        RETURNING txid, id, kind, task_id, owner_id, owner_given, payload, created_at),
      batch AS (
        SELECT min(l.txid) AS txid, min(l.id) AS first,
               -- json, not text[]: a host's client may not know array types (fetch_types: false).
               json_agg(${name(qualified(schema, 'mesh_log_cursor'))}(l.txid, l.id) ORDER BY l.id) AS cursors,
               json_agg(json_build_array(l.id::text, l.kind, l.task_id, l.owner_id, l.owner_given, l.payload,
                                         (extract(epoch FROM l.created_at) * 1000)::float8) ORDER BY l.id) AS rows
        FROM logged l)
      SELECT b.cursors, pg_notify(${CHANNEL}, ${notice})
      FROM (
        SELECT a.txid, a.cursors, json_build_object('txid', a.txid::text, 'prev', (
            -- The newest row before this statement's (the log's own order, off its primary key).
            SELECT json_build_array(p.txid::text, p.id::text) FROM ${log} p
            WHERE (p.txid, p.id) < (a.txid, a.first) ORDER BY p.txid DESC, p.id DESC LIMIT 1),
          'rows', a.rows)::text AS body
        FROM batch a) b`;
  }

  private async writeIn(tx: TransactionSql<any>, entry: BusEntry): Promise<string> {
    try {
      const [row] = await this.insert(tx as unknown as Sql<any>, [entry]);
      return row!.cursors[0]!;
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
        batch.forEach((item, i) => item.resolve(outcome.rows[0]!.cursors[i]!));
      } else if (batch.length > 1 && isRefusedData(outcome.error)) {
        for (const item of batch) {
          const one = await this.bounded(this.insert(this.sql, [item.entry]));
          if (one.ok) item.resolve(one.rows[0]!.cursors[0]!);
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
    return pTimeout(statement, {
      milliseconds: publishTimeoutMs,
      message: `the event log did not answer within ${publishTimeoutMs} ms`,
    }).then(
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
