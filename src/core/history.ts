/**
 * Replays for `since`, as frames for one principal: the bus's pages filtered by the same
 * visibility rule as live delivery. Pages are read a few at a time across all sockets
 * (`replayConcurrency`) and each within a time limit, so that resumes cannot crowd out everyone else.
 */
import pLimit, { type LimitFunction } from 'p-limit';
import pTimeout from 'p-timeout';
import type { EventBus, LoggedEvent, ReplayStream } from '../bus/bus.js';
import type { History, Replayed, ReplayResult } from './history-types.js';
import { NO_SUCH_TASK, type OwnerDirectory } from './owners.js';
import type { Principal } from './ports.js';
import { canSee } from './principal.js';

/** A replay page: few enough rows and bytes to read, encode and write without holding up the loop. */
const PAGE_ROWS = 500;
const PAGE_BYTES = 256 * 1024;
/** A page slower than this answers `resyncRequired` `unavailable`. */
const PAGE_TIMEOUT_MS = 10_000;

export interface HistorySettings {
  /** Most events one `since` replays (first page: beyond it, `tooFarBehind`). */
  maxEvents: number;
  /** Pages read at once, across all sockets. */
  concurrency: number;
  /** Payload bytes per page, at most (it always holds at least one event). */
  pageBytes: number;
}

export class EventHistory implements History {
  private readonly pages: LimitFunction;
  private readonly pageBytes: number;

  constructor(
    private readonly bus: EventBus,
    private readonly owners: OwnerDirectory,
    /** The frame of a logged event, or undefined when it cannot be encoded (it is then skipped). */
    private readonly frameOf: (logged: LoggedEvent) => Buffer | undefined,
    /** Whether live events still wait for their owner's lookup. */
    readonly behind: () => boolean,
    private readonly settings: HistorySettings,
  ) {
    this.pages = pLimit(settings.concurrency);
    this.pageBytes = Math.max(1, Math.min(PAGE_BYTES, settings.pageBytes));
  }

  head(): string {
    return this.bus.head();
  }

  compare(a: string, b: string): number {
    return this.bus.compare(a, b);
  }

  async replayPage(principal: Principal, stream: ReplayStream, after: string, first: boolean): Promise<ReplayResult> {
    if (stream.kind === 'all' && !principal.admin && principal.ownerId === null)
      return { ok: true, page: { frames: [], last: after, more: false } };
    const limit = first ? this.settings.maxEvents : undefined;
    // Bounded, so that a database gone mute cannot hold the replay slots (and the sockets) forever.
    const read = await this.pages(() =>
      pTimeout(this.bus.replay(stream, after, { rows: PAGE_ROWS, bytes: this.pageBytes, limit }), {
        milliseconds: PAGE_TIMEOUT_MS,
        message: `a replay page took longer than ${PAGE_TIMEOUT_MS} ms`,
      }),
    );
    if (!read.ok) return read;
    // Events logged without a settled owner: one batched lookup for their tasks; a task whose owner
    // cannot be settled is admins-only.
    const looked = new Map<string, string | null>();
    const unknown = new Set(read.events.filter((e) => e.event.ownerId === undefined).map((e) => e.event.taskId));
    await Promise.all(
      [...unknown].map(async (taskId) => {
        const answer = await this.owners.lookup(taskId).catch(() => null);
        looked.set(taskId, answer === NO_SUCH_TASK ? null : answer);
      }),
    );
    const frames: Replayed[] = [];
    for (const e of read.events) {
      const { taskId, ownerId } = e.event;
      if (!canSee(principal, ownerId !== undefined ? ownerId : (looked.get(taskId) ?? null))) continue;
      const frame = this.frameOf(e);
      if (frame) frames.push({ kind: e.kind, taskId, cursor: e.cursor, frame });
    }
    return { ok: true, page: { frames, last: read.last, more: read.more } };
  }
}
