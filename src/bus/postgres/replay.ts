/**
 * Replay: one page of a stream's logged events after a cursor, for a subscription with `since`.
 * Apart from the live reader because it reads on a caller's behalf, not the instance's: it holds
 * no state, and each page is read in one REPEATABLE READ snapshot with its check for pruning.
 */
import type { Sql } from 'postgres';
import type { LoggedEvent, PageSize, ReplayPage, ReplayStream } from '../bus.js';
import { after, type Cursors, type Position } from './cursor.js';
import { HISTORY_START, type TruncatedReason } from '../../protocol/wire.js';
import type { PostgresOptions } from '../../options.js';
import { toLogged, type Row, type RowOptions } from './rows.js';
import { logTables } from './schema.js';

/** Before every event: where a history from HISTORY_START reads on from. */
const ORIGIN: Position = { txid: 0n, id: 0n };

export class Replay {
  private readonly tables: ReturnType<typeof logTables>;

  constructor(
    private readonly sql: Sql<any>,
    private readonly cursors: Cursors,
    private readonly options: RowOptions & Pick<PostgresOptions, 'schema'>,
  ) {
    this.tables = logTables(this.options.schema);
  }

  async page(stream: ReplayStream, start: string, page: PageSize): Promise<ReplayPage> {
    const fromStart = start === HISTORY_START && stream.kind !== 'all';
    const parsed = fromStart ? ORIGIN : this.cursors.parse(start);
    if (!parsed) return { ok: false, resync: 'unknownCursor' };
    let from: Position = parsed;
    // One snapshot for the pruning check and the read: a prune that commits in between cannot
    // remove rows after `after` unnoticed.
    return this.sql.begin('isolation level repeatable read read only', async (transaction): Promise<ReplayPage> => {
      const tx = transaction as unknown as Sql<any>;
      const [state] = await tx<
        {
          pruned_txid: string;
          pruned_id: string;
          task_txid: string | null;
          task_id: string | null;
          head_txid: string | null;
          head_id: string | null;
          horizon_txid: string | null;
          horizon_id: string | null;
        }[]
      >`
        SELECT m.pruned_txid::text, m.pruned_id::text, t.pruned_txid::text AS task_txid, t.pruned_id::text AS task_id,
               h.txid::text AS head_txid, h.id::text AS head_id, z.txid::text AS horizon_txid, z.id::text AS horizon_id
        FROM ${tx.unsafe(this.tables.meta)} m
        LEFT JOIN LATERAL (${this.prunedFor(tx, stream)}) t ON true
        LEFT JOIN LATERAL (SELECT txid, id FROM ${tx.unsafe(this.tables.log)} ORDER BY txid DESC, id DESC LIMIT 1) h ON true
        -- The newest event every snapshot from now on sees (nothing before it can still commit).
        LEFT JOIN LATERAL (
          SELECT txid, id FROM ${tx.unsafe(this.tables.log)} WHERE (txid, id) < (pg_snapshot_xmin(pg_current_snapshot()), 0)
          ORDER BY txid DESC, id DESC LIMIT 1) z ON true`;
      const pruned = { txid: BigInt(state!.pruned_txid), id: BigInt(state!.pruned_id) };
      const taskPruned = state!.task_txid === null ? undefined : { txid: BigInt(state!.task_txid), id: BigInt(state!.task_id!) };
      let truncated: TruncatedReason | undefined;
      if (fromStart) {
        // Per task, retention records where it pruned: that is where this history begins.
        if (taskPruned) truncated = 'retention';
      } else {
        if (after(pruned, from)) return { ok: false, resync: 'expired' };
        if (taskPruned && after(taskPruned, from)) return { ok: false, resync: 'expired' };
        const head = state!.head_txid === null ? pruned : { txid: BigInt(state!.head_txid), id: BigInt(state!.head_id!) };
        if (after(from, head) && after(from, pruned)) return { ok: false, resync: 'unknownCursor' };
      }
      const horizon = state!.horizon_txid === null ? pruned : { txid: BigInt(state!.horizon_txid), id: BigInt(state!.horizon_id!) };
      if (fromStart && page.limit !== undefined) {
        // Beyond the limit, the newest `limit` events: a transcript shows its end.
        const [cut] = await tx<{ txid: string; id: string }[]>`
          SELECT txid::text, id::text FROM ${this.eventsOf(tx, stream, from)} ORDER BY e.txid DESC, e.id DESC OFFSET ${page.limit} LIMIT 1`;
        if (cut) {
          from = { txid: BigInt(cut.txid), id: BigInt(cut.id) };
          truncated = 'maxReplay';
        }
      } else if (page.limit !== undefined) {
        const [count] = await tx<{ n: number }[]>`
          SELECT count(*)::int AS n FROM (SELECT 1 FROM ${this.eventsOf(tx, stream, from)} LIMIT ${page.limit + 1}) c`;
        if (count!.n > page.limit) return { ok: false, resync: 'tooFarBehind' };
      }
      // The page stops at the row that takes it past `bytes`: it always holds at least one.
      const rows = await tx<(Row & { fetched: number })[]>`
        WITH page AS (
          SELECT txid, id, kind, task_id, owner_id, owner_given, payload, octet_length(payload::text) AS size
          FROM ${this.eventsOf(tx, stream, from)}
          -- Qualified: a bare name would sort by the text column of the same name in the output.
          ORDER BY e.txid, e.id LIMIT ${page.rows}),
        sized AS (SELECT *, sum(size) OVER (ORDER BY txid, id) - size AS before, count(*) OVER () AS fetched FROM page)
        SELECT txid::text, id::text, kind, task_id::text, owner_id::text, owner_given, payload, fetched::int
        FROM sized WHERE before < ${page.bytes} ORDER BY sized.txid, sized.id`;
      const last = rows.at(-1);
      const more = last !== undefined && (rows.length < last.fetched || last.fetched === page.rows);
      const end = more ? { txid: BigInt(last.txid), id: BigInt(last.id) } : after(horizon, from) ? horizon : from;
      const result: ReplayPage = {
        ok: true,
        events: rows.map((row) => toLogged(row, this.cursors, this.options)).filter((e): e is LoggedEvent => e !== undefined),
        last: end === from && !fromStart ? start : this.cursors.format(end.txid, end.id),
        more,
      };
      if (truncated) result.truncated = truncated;
      return result;
    });
  }

  /**
   * The events of `stream` after `from` that every reader can see, as a source `e` read in
   * (txid, id) order off an index: one tenant's `subscribeAll` reads its own events, never the
   * whole log (its events and those logged without an owner are two index ranges, merged).
   */
  private eventsOf(sql: Sql<any>, stream: ReplayStream, from: Position) {
    const after = sql`(txid, id) > (${from.txid.toString()}::xid8, ${from.id.toString()}::bigint)
      AND txid < pg_snapshot_xmin(pg_current_snapshot())`;
    if (stream.kind !== 'all')
      return sql`${sql.unsafe(this.tables.log)} e WHERE task_id = ${stream.taskId}::uuid AND kind = ${stream.kind} AND ${after}`;
    if (stream.ownerId === null) return sql`${sql.unsafe(this.tables.log)} e WHERE kind = 'update' AND ${after}`;
    return sql`(
        SELECT * FROM ${sql.unsafe(this.tables.log)} WHERE kind = 'update' AND owner_id = ${stream.ownerId}::uuid AND ${after}
        UNION ALL
        SELECT * FROM ${sql.unsafe(this.tables.log)} WHERE kind = 'update' AND NOT owner_given AND ${after}
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
    return sql`SELECT pruned_txid, pruned_id FROM ${sql.unsafe(this.tables.prunedTasks)} WHERE ${where} ORDER BY pruned_txid DESC, pruned_id DESC LIMIT 1`;
  }
}
