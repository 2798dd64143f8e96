/**
 * Replays for `since`, as frames for one principal: the bus's pages filtered by the same
 * visibility rule as live delivery. Pages are read a few at a time across all sockets
 * (`replayConcurrency`) and each within a time limit, so that resumes cannot crowd out everyone
 * else; and at most half of those at once for one principal, so that a tenant that opens
 * histories by the thousand waits behind its own, never in front of another's.
 */
import pLimit, { type LimitFunction } from 'p-limit';
import type { EventBus, LoggedEvent, ReplayPage, ReplayStream } from '../bus/bus.js';
import { within } from './deadline.js';
import type { History, Replayed, ReplayedPage, ReplayResult, TaskStream } from './history-types.js';
import { NO_SUCH_TASK, type OwnerDirectory } from './owners.js';
import type { Principal } from './ports.js';
import { canSee, principalKey } from './principal.js';

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

const HIDDEN = { ok: false, hidden: true } as const;

/** One principal's page reads: how many run, and who waits for a turn, first come first served. */
interface Turns {
  reading: number;
  waiting: (() => void)[];
}

const PAGE_LATE = `a replay page took longer than ${PAGE_TIMEOUT_MS} ms`;

export class EventHistory implements History {
  private readonly pages: LimitFunction;
  /**
   * Per principal with pages to read: how many it reads, `perPrincipal` at most, and who waits.
   * Not a p-limit each: in a resume storm every socket is a principal of its own, and making one
   * per read was a tenth of the storm's own CPU.
   */
  private readonly turns = new Map<string, Turns>();
  private readonly perPrincipal: number;
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
    this.perPrincipal = Math.max(1, Math.floor(settings.concurrency / 2));
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
    const reading = this.read(principal, stream, after, PAGE_ROWS, first ? this.settings.maxEvents : undefined);
    if (stream.kind !== 'all') {
      // Decided once the page is read, whatever the read gave: an owner change that committed
      // before takes the page from the old owner, and neither a resync's reason nor a failure
      // tells anything of a task the principal may not see. A subscribe with `since` has no other check.
      const read = await reading.catch((error: unknown) => ({ failed: error }));
      if (!(await this.visibleNow(principal, stream.taskId))) return HIDDEN;
      if ('failed' in read) throw read.failed;
      return read.ok ? this.page(read) : read;
    }
    const read = await reading;
    if (!read.ok) return read;
    // Across tasks, each event goes by the owner it was logged with. Events logged without a
    // settled owner: one batched lookup for their tasks; a task whose owner cannot be settled is admins-only.
    const looked = new Map<string, string | null>();
    const unknown = new Set(read.events.filter((e) => e.event.ownerId === undefined).map((e) => e.event.taskId));
    await Promise.all(
      [...unknown].map(async (taskId) => {
        const answer = await this.owners.lookup(taskId).catch(() => null);
        looked.set(taskId, answer === NO_SUCH_TASK ? null : answer);
      }),
    );
    return this.page(read, (e) =>
      canSee(principal, e.event.ownerId !== undefined ? e.event.ownerId : (looked.get(e.event.taskId) ?? null)),
    );
  }

  /**
   * One page of a task's history for the REST routes: `rows` events at most after `after` (a cursor
   * or HISTORY_START), `hidden` unless `principal` may see the task now. Throws
   * OwnerLookupUnavailableError when that cannot be checked.
   */
  async taskPage(principal: Principal, stream: TaskStream, after: string, rows: number): Promise<ReplayResult> {
    // Asked first, the same way for a task that is not there and one that is not the caller's.
    if (!(await this.visibleNow(principal, stream.taskId))) return HIDDEN;
    const read = await this.read(principal, stream, after, Math.max(1, Math.min(PAGE_ROWS, rows)), undefined);
    if (!read.ok) return read;
    // And again once read, as for a replay: an owner change that committed meanwhile takes the page away.
    return (await this.visibleNow(principal, stream.taskId)) ? this.page(read) : HIDDEN;
  }

  /** One page of the bus, bounded in time so that a database gone mute cannot hold the replay slots (and the sockets) forever. */
  private async read(
    principal: Principal,
    stream: ReplayStream,
    after: string,
    rows: number,
    limit: number | undefined,
  ): Promise<ReplayPage> {
    const key = principalKey(principal);
    let turns = this.turns.get(key);
    if (!turns) this.turns.set(key, (turns = { reading: 0, waiting: [] }));
    if (turns.reading < this.perPrincipal) turns.reading++;
    // Its turn is handed over by a read that ends, so that no newcomer takes it in between.
    else await new Promise<void>((resolve) => turns.waiting.push(resolve));
    try {
      return await this.pages(() =>
        within(this.bus.replay(stream, after, { rows, bytes: this.pageBytes, limit }), PAGE_TIMEOUT_MS, PAGE_LATE),
      );
    } finally {
      const next = turns.waiting.shift();
      if (next) next();
      else if (--turns.reading === 0) this.turns.delete(key);
    }
  }

  private async visibleNow(principal: Principal, taskId: string): Promise<boolean> {
    const owner = await this.owners.lookup(taskId);
    return owner !== NO_SUCH_TASK && canSee(principal, owner);
  }

  /** The frames of a page's events (those `visible` lets through; undefined: all). */
  private page(read: ReplayPage & { ok: true }, visible?: (e: LoggedEvent) => boolean): ReplayResult {
    const frames: Replayed[] = [];
    for (const e of read.events) {
      if (visible && !visible(e)) continue;
      const frame = this.frameOf(e);
      if (frame) frames.push({ kind: e.kind, taskId: e.event.taskId, cursor: e.cursor, frame });
    }
    const page: ReplayedPage = { frames, last: read.last, more: read.more };
    if (read.truncated) page.truncated = read.truncated;
    return { ok: true, page };
  }
}
