/**
 * What a replay hands a connection: the history (src/core/history.ts) reads these pages, the
 * resume seam (src/core/resume.ts) sends them. Types only, so that neither imports the other.
 */
import type { ReplayStream, ResyncReason } from '../bus/bus.js';
import type { Principal } from './ports.js';

/** A replayed event, as a connection sends it. */
export interface Replayed {
  kind: 'update' | 'output';
  taskId: string;
  cursor: string;
  frame: Buffer;
}

/** A page of a replay for one principal: `last`, where the next page starts; `more`, whether one may follow. */
export interface ReplayedPage {
  frames: Replayed[];
  last: string;
  more: boolean;
}

/** A page, or why there is none: the client must refetch (`resyncRequired`). */
export type ReplayResult = { ok: true; page: ReplayedPage } | { ok: false; resync: ResyncReason };

/** The log as a resume sees it: pages of what a stream missed, and the order of its cursors. */
export interface History {
  /** One page after `after`, as frames `principal` may see; `first` checks how far back it reaches. */
  replayPage(principal: Principal, stream: ReplayStream, after: string, first: boolean): Promise<ReplayResult>;
  /** Where a stream that starts now begins. */
  head(): string;
  /** Orders two cursors (negative: `a` comes first). */
  compare(a: string, b: string): number;
  /** Whether logged events are still waiting for their owner: they may arrive behind newer ones. */
  behind(): boolean;
}
