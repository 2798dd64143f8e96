/**
 * Retention: removes events past their age (`retentionMs`) or beyond the per-task count
 * (`retentionPerTask`), and records how far it removed, so that a replay from before that answers
 * `expired` rather than a silent gap. Apart from reading and writing because it runs on its own
 * timer, one instance at a time; its only state is whether the bus stopped.
 */
import type { FastifyBaseLogger } from 'fastify';
import type { Sql } from 'postgres';
import type { PostgresOptions } from '../../options.js';
import { logTables } from './schema.js';

export interface RetentionOptions extends Pick<PostgresOptions, 'retentionMs' | 'retentionPerTask' | 'schema'> {
  /** Called after each pruning round that removed rows. */
  onPruned?: (rows: number) => void;
}

const PRUNE_BATCH = 5000;
const PRUNE_LOCK = 0x6d657368_7072756en; // "meshprun"

export class Retention {
  private stopped = false;

  private readonly tables: ReturnType<typeof logTables>;

  constructor(
    private readonly sql: Sql<any>,
    private readonly options: RetentionOptions,
    private readonly log: FastifyBaseLogger,
  ) {
    this.tables = logTables(this.options.schema);
  }

  /**
   * Records, per task, the newest event a round removed (from `gone`): a replay from before it
   * answers `expired`, and a history from the start says it is truncated. Both rules record it,
   * the age as well as the count: otherwise a quiet task could not tell a pruned past from none.
   */
  private markTasks(sql: Sql<any>) {
    return sql`
      INSERT INTO ${sql.unsafe(this.tables.prunedTasks)} (task_id, owner_id, pruned_txid, pruned_id)
      SELECT DISTINCT ON (task_id) task_id, owner_id, txid, id FROM gone ORDER BY task_id, txid DESC, id DESC
      ON CONFLICT (task_id) DO UPDATE SET owner_id = excluded.owner_id, pruned_txid = excluded.pruned_txid, pruned_id = excluded.pruned_id
        WHERE (excluded.pruned_txid, excluded.pruned_id) > (mesh_event_log_pruned_tasks.pruned_txid, mesh_event_log_pruned_tasks.pruned_id)
      RETURNING 1`;
  }

  /** From now on: no new round, and a round under way stops after its current batch. */
  halt(): void {
    this.stopped = true;
  }

  /**
   * Removes events past their age or beyond the per-task count, a few thousand per statement so
   * that no transaction stays open long (a long one would hold every reader back). One instance
   * at a time, under a session advisory lock on a reserved connection (of `directSql`: a lock taken
   * through a transaction-mode pooler would stay on a server that goes back to the pool).
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
        for (let n = PRUNE_BATCH; n === PRUNE_BATCH && !this.stopped;) {
          const [r] = await reserved<{ n: number }[]>`
            WITH gone AS (
              DELETE FROM ${reserved.unsafe(this.tables.log)} WHERE (txid, id) IN (
                SELECT txid, id FROM ${reserved.unsafe(this.tables.log)} WHERE created_at < ${cutoff} ORDER BY created_at LIMIT ${PRUNE_BATCH})
              RETURNING task_id, owner_id, txid, id),
            newest AS (SELECT txid, id FROM gone ORDER BY txid DESC, id DESC LIMIT 1),
            moved AS (
              UPDATE ${reserved.unsafe(this.tables.meta)} m SET pruned_txid = newest.txid, pruned_id = newest.id FROM newest
              WHERE (newest.txid, newest.id) > (m.pruned_txid, m.pruned_id) RETURNING 1),
            marked AS (${this.markTasks(reserved)})
            SELECT count(*)::int AS n FROM gone`;
          n = r!.n;
          removed += n;
        }
        const [r] = await reserved<{ n: number }[]>`
          WITH excess AS (
            SELECT task_id FROM ${reserved.unsafe(this.tables.log)} GROUP BY task_id HAVING count(*) > ${this.options.retentionPerTask} LIMIT 100),
          doomed AS (
            SELECT e.txid, e.id FROM excess x CROSS JOIN LATERAL (
              SELECT txid, id FROM ${reserved.unsafe(this.tables.log)} WHERE task_id = x.task_id
              ORDER BY txid DESC, id DESC OFFSET ${this.options.retentionPerTask}) e),
          gone AS (
            DELETE FROM ${reserved.unsafe(this.tables.log)} l USING doomed d WHERE l.txid = d.txid AND l.id = d.id
            RETURNING l.task_id, l.owner_id, l.txid, l.id),
          marked AS (${this.markTasks(reserved)})
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
