/**
 * The event bus: where published events are logged, in one order, before any socket gets them.
 * The memory bus keeps one process's recent events; the PostgreSQL bus shares them between
 * instances and keeps them for replay. Either hands the hub each new event once, in log order.
 */
import type { TaskOutputEvent, TaskUpdateEvent } from '../protocol/codec.js';
import type { ResyncReason, TruncatedReason } from '../protocol/wire.js';

/** An event to log. `event.ownerId` undefined: the owner is looked up on delivery. */
export type BusEntry = { kind: 'update'; event: TaskUpdateEvent } | { kind: 'output'; event: TaskOutputEvent };

/** An event as the log holds it, with its cursor: opaque to clients, ordered by the bus. */
/** `publishedAt`: ms since the epoch when it was published (for the latency metric), when known. */
export type LoggedEvent = BusEntry & { cursor: string; publishedAt?: number };

/** What a subscription with `since` asks the log for. */
export type ReplayStream =
  | { kind: 'update'; taskId: string }
  | { kind: 'output'; taskId: string }
  /** Every task update; owner-scoped by the caller (`ownerId`: only that owner's and owner-unknown events). */
  | { kind: 'all'; ownerId: string | null };

/** Why a replay cannot be made; the client gets `resyncRequired` with it. */
export type { ResyncReason, TruncatedReason };

/** How much one page of a replay may hold; the first page also says how far back a replay may reach. */
export interface PageSize {
  rows: number;
  /** Payload bytes; a page always holds at least one event, however large. */
  bytes: number;
  /** First page only: more than this many events after `since` answers `tooFarBehind`. */
  limit?: number;
}

/**
 * One page of a replay. `last` is where the next page starts: the cursor of the last event read
 * while `more` (events may follow it); on the last page, the snapshot's horizon, at or after every
 * event the snapshot could see (a real cursor, even for an empty history), so that a stream that
 * goes live from it neither misses nor repeats one. Each page is read in one snapshot of the log,
 * with its check for pruning: a page is gapless from where it starts, or the answer is `expired`.
 * `truncated`, on the first page of a replay from HISTORY_START only: the history does not begin
 * at the stream's first event.
 */
export type ReplayPage =
  { ok: true; events: LoggedEvent[]; last: string; more: boolean; truncated?: TruncatedReason } | { ok: false; resync: ResyncReason };

/** Receives new events in log order; resolves once they have been handed to the sockets. */
export type BusSink = (events: readonly LoggedEvent[]) => Promise<void>;

export interface EventBus {
  /** Starts delivering new events to `sink`. */
  start(sink: BusSink): Promise<void>;
  /**
   * Logs an event and resolves with its cursor; with `transaction` (the caller's; for the PostgreSQL bus a `postgres` TransactionSql), inside
   * that transaction: it is delivered only if and once it commits. Rejects with MeshPublishError
   * when the log refuses the event itself, MeshBusUnavailableError when the log is out of reach.
   */
  publish(entry: BusEntry, transaction?: unknown): Promise<string>;
  /**
   * The events of `stream` after `after`, in log order, one page of them: everything the stream
   * would have delivered. Owner filtering is left to the caller. `after` HISTORY_START (task
   * streams only): from the stream's oldest retained event, or, past `page.limit` events, from the
   * newest `limit` of them.
   */
  replay(stream: ReplayStream, after: string, page: PageSize): Promise<ReplayPage>;
  /** A cursor before everything the log will deliver from now on: where a new stream starts. */
  head(): string;
  /** Orders two cursors of this log (negative: `a` comes first); 0 for a cursor that is not one. */
  compare(a: string, b: string): number;
  stop(): Promise<void>;
  /** Whether it hears new events as they come (the PostgreSQL bus: its LISTEN connection hears its heartbeat). */
  listening(): boolean;
  /** Seconds committed events have been waiting behind a running transaction (0: none waits). */
  heldBackSeconds(): number;
}

export function matches(stream: ReplayStream, e: LoggedEvent): boolean {
  if (stream.kind === 'all') {
    return e.kind === 'update' && (stream.ownerId === null || e.event.ownerId === undefined || e.event.ownerId === stream.ownerId);
  }
  return e.kind === stream.kind && e.event.taskId === stream.taskId;
}
