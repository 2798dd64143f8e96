/**
 * What a replay hands a connection: the history (src/core/history.ts) reads these pages, the
 * resume seam (src/core/resume.ts) sends them. Types only, so that neither imports the other.
 */
import type { ReplayStream, ResyncReason, TruncatedReason } from '../bus/bus.js';
import type { Principal } from './ports.js';

/** A replayed event, as a connection sends it. */
export interface Replayed {
  kind: 'update' | 'output';
  taskId: string;
  cursor: string;
  frame: Buffer;
}

/**
 * A page of a replay for one principal: `last`, where the next page starts (on the last page, where
 * the stream goes live); `more`, whether one may follow; `truncated`, on the first page from
 * HISTORY_START, why the history does not begin at the task's first event.
 */
export interface ReplayedPage {
  frames: Replayed[];
  last: string;
  more: boolean;
  truncated?: TruncatedReason;
}

/**
 * A page, or why there is none: the client must refetch (`resyncRequired`), or, for a task's
 * stream, the principal may not see the task (any more): `hidden`.
 */
export type ReplayResult = { ok: true; page: ReplayedPage } | { ok: false; resync: ResyncReason } | { ok: false; hidden: true };

/** A task's own stream. */
export type TaskStream = Extract<ReplayStream, { taskId: string }>;

/** The log as a resume sees it: pages of what a stream missed, and the order of its cursors. */
export interface History {
  /**
   * One page after `after` (a cursor, or HISTORY_START for a task's stream), as frames `principal`
   * may see; `first` checks how far back it reaches. A task's stream is the task's whole stream to
   * whoever may see the task when the page has been read; `hidden` to anyone else.
   */
  replayPage(principal: Principal, stream: ReplayStream, after: string, first: boolean): Promise<ReplayResult>;
  /** Where a stream that starts now begins. */
  head(): string;
  /** Orders two cursors (negative: `a` comes first). */
  compare(a: string, b: string): number;
  /** Whether logged events are still waiting for their owner: they may arrive behind newer ones. */
  behind(): boolean;
}
