/**
 * Replay: one page of a stream's logged events after a cursor, for a subscription with `since`.
 * Apart from the live reader because it reads on a caller's behalf, not the instance's: it holds
 * no state, and each page is read in one REPEATABLE READ snapshot with its check for pruning.
 */
import type { Sql } from 'postgres';
import type { LoggedEvent, PageSize, ReplayPage, ReplayStream } from '../bus.js';
import { after, type Cursors, type Position } from './cursor.js';
import type { PostgresOptions } from '../../options.js';
import { toLogged, type Row, type RowOptions } from './rows.js';
import { logTables } from './schema.js';

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
    const from = this.cursors.parse(start);
    if (!from) return { ok: false, resync: 'unknownCursor' };
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
        }[]
      >`
        SELECT m.pruned_txid::text, m.pruned_id::text, t.pruned_txid::text AS task_txid, t.pruned_id::text AS task_id,
               h.txid::text AS head_txid, h.id::text AS head_id
        FROM ${tx.unsafe(this.tables.meta)} m
        LEFT JOIN LATERAL (${this.prunedFor(tx, stream)}) t ON true
        LEFT JOIN LATERAL (SELECT txid, id FROM ${tx.unsafe(this.tables.log)} ORDER BY txid DESC, id DESC LIMIT 1) h ON true`;
      const pruned = { txid: BigInt(state!.pruned_txid), id: BigInt(state!.pruned_id) };
      if (after(pruned, from)) return { ok: false, resync: 'expired' };
      if (state!.task_txid !== null && after({ txid: BigInt(state!.task_txid), id: BigInt(state!.task_id!) }, from))
        return { ok: false, resync: 'expired' };
      const head = state!.head_txid === null ? pruned : { txid: BigInt(state!.head_txid), id: BigInt(state!.head_id!) };
      if (after(from, head) && after(from, pruned)) return { ok: false, resync: 'unknownCursor' };
      const events = this.eventsOf(tx, stream, from);
      if (page.limit !== undefined) {
        const [count] = await tx<{ n: number }[]>`
          SELECT count(*)::int AS n FROM (SELECT 1 FROM ${events} LIMIT ${page.limit + 1}) c`;
        if (count!.n > page.limit) return { ok: false, resync: 'tooFarBehind' };
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
        ok: true,
        events: rows.map((row) => toLogged(row, this.cursors, this.options)).filter((e): e is LoggedEvent => e !== undefined),
        last: last ? this.cursors.format(last.txid, last.id) : start,
        more: last !== undefined && (rows.length < last.fetched || last.fetched === page.rows),
      };
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
