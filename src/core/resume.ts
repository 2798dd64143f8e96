/**
 * Resuming streams with `since`: what a subscription missed is replayed page by page as the
 * client takes it, then the stream goes live, with no gap and no repeat at the seam.
 *
 * The subscription is in the index before the first page is read, so nothing published meanwhile
 * falls between the two. While a stream's replay runs, its live frames are set aside, those of the
 * current page's read only and up to a byte budget: the last page leaves out what came while it
 * was read, and those go out right after it; past the budget they are dropped and the replay
 * reads on instead. Afterwards the seam remembers up to which cursor the client has the stream:
 * live frames at or before it are repeats; the first one after it ends the seam. Other streams of
 * the socket stay live throughout.
 *
 * A reconnecting client sends all its subscribes at once: a burst of resumes. While the burst
 * lasts (some frame of the socket still waits), it remembers what the socket has of task updates,
 * so that a later replay skips it and two subscriptions covering one event (`subscribe` and
 * `subscribeAll`) do not both carry it.
 */
import type { ReplayStream, ResyncReason } from '../bus/bus.js';
import type { Frames, ResumableSubscription } from './frames.js';
import type { History, ReplayResult } from './history-types.js';
import type { MetricsSink, Principal } from './ports.js';
import { HISTORY_START } from '../protocol/wire.js';
import { OwnerLookupUnavailableError } from '../errors.js';

/** A stream of a socket's: `u:<task>`, `o:<task>` or `all`. */
export type StreamKey = string;
export const streamKey = (stream: ReplayStream): StreamKey =>
  stream.kind === 'all' ? 'all' : `${stream.kind === 'update' ? 'u' : 'o'}:${stream.taskId}`;

/** Where resumed frames go: the socket's outbound queue (src/core/outbound.ts). */
export interface ResumeOutput {
  replayed(kind: 'update' | 'output', taskId: string, frame: Buffer, cursor: string): void;
  update(taskId: string, frame: Buffer): void;
  output(taskId: string, frame: Buffer, cursor: string): void;
  control(frame: Buffer): void;
  startOutput(taskId: string, cursor: string): void;
  roomFor(below: number): Promise<void>;
}

/** The socket whose streams resume. */
export interface Resumer {
  readonly principal: Principal;
  /** Task ids it follows for updates, and whether it holds `subscribeAll`: which streams carry an update. */
  readonly updates: ReadonlySet<string> | undefined;
  readonly all: boolean;
  isOpen(): boolean;
  /** The principal may no longer see this task: its subscription ends (the client is told). */
  lostSight(subscription: 'subscribe' | 'subscribeOutput', taskId: string): void;
}

/**
 * A task subscribe whose owner check is its first page's, made once the page is read: its ack
 * waits for that check, and goes out with the first replayed events. Told once, unless the socket
 * closes first.
 */
export interface PendingSubscribe {
  /** The principal may see the task: the ack goes out, ahead of anything the replay sends. */
  granted(): void;
  /** It may not (`hidden`), or that could not be checked (`unavailable`, `error`): nothing was sent. */
  refused(why: 'hidden' | 'unavailable', error?: OwnerLookupUnavailableError): void;
}

export interface ResumeSettings {
  /** Bytes of live frames a stream sets aside during one page's read; past it they are dropped. */
  asideBytes: number;
  /** The next page is read once fewer bytes than this are pending on the socket. */
  pageRoom: number;
}

/** A live frame of a resuming stream, set aside while a page is read. */
interface Aside {
  kind: 'update' | 'output';
  taskId: string;
  cursor: string;
  frame: Buffer;
}

type Seam = { replaying: true; aside: Aside[]; asideBytes: number; overflowed: boolean } | { replaying: false; floor: string };

/** Live updates a burst remembers, at most: a long replay must not make it grow without end. */
export const BURST_LIVE_LIMIT = 10_000;

/**
 * A burst of resumes: the live updates sent meanwhile (few), and per stream resumed, up to where
 * the client now has it — a floor per stream, not a record per replayed event, so that memory
 * does not grow with the replay.
 */
interface Burst {
  live: Set<string>;
  /** Per task: every update of it up to this cursor is with the client (a resumed `subscribe`). */
  tasks: Map<string, string>;
  /** Every update the principal may see up to this cursor is with the client (a resumed `subscribeAll`). */
  all: string | undefined;
}

export class ResumeSeams {
  /** By stream; undefined when none resumes (the usual case). */
  private seams: Map<StreamKey, Seam> | undefined;
  private burst: Burst | undefined;

  constructor(
    private readonly socket: Resumer,
    private readonly history: History,
    private readonly out: ResumeOutput,
    private readonly frames: Frames,
    private readonly metrics: MetricsSink,
    private readonly settings: ResumeSettings,
    private readonly onReplayFailed: (error: unknown) => void,
  ) {}

  /**
   * Whether a live frame stays here rather than going out now: only when every stream of the
   * socket that carries it is resuming and has it (or will read it). Other frames are untouched.
   */
  takesLive(kind: 'update' | 'output', taskId: string, cursor: string, frame: Buffer): boolean {
    const seams = this.seams;
    if (seams === undefined) return false;
    const keys =
      kind === 'output'
        ? [`o:${taskId}`]
        : this.socket.updates?.has(taskId)
          ? this.socket.all
            ? [`u:${taskId}`, 'all']
            : [`u:${taskId}`]
          : ['all'];
    // A task's own replay holds its updates, whatever else carries them (`subscribeAll`): they
    // follow its history, and the task's frames arrive in log order.
    if (keys.length === 2 && seams.get(keys[0]!)?.replaying) return this.setAside(keys, kind, taskId, cursor, frame);
    for (const key of keys) {
      const seam = seams.get(key);
      if (seam === undefined) return false;
      if (!seam.replaying && this.history.compare(cursor, seam.floor) > 0) {
        // Past the seam: this stream is live now — once no older event can still come (events
        // waiting for their owner's lookup are delivered behind later ones of other tasks).
        if (!this.history.behind()) this.end(key);
        return false;
      }
    }
    return this.setAside(keys, kind, taskId, cursor, frame);
  }

  /** Keeps a live frame in the replaying seams of `keys` (within their budget); true: taken. */
  private setAside(keys: string[], kind: 'update' | 'output', taskId: string, cursor: string, frame: Buffer): true {
    for (const key of keys) {
      const seam = this.seams!.get(key);
      if (seam === undefined || !seam.replaying || seam.overflowed) continue;
      seam.aside.push({ kind, taskId, cursor, frame });
      seam.asideBytes += frame.length;
      if (seam.asideBytes > this.settings.asideBytes) {
        seam.aside = [];
        seam.overflowed = true;
      }
    }
    return true;
  }

  /** A live update went out: a replay later in this burst must not repeat it. */
  sentLive(cursor: string): void {
    // Bounded: past it a later replay of the burst may repeat an update, which cursors tell apart.
    if (this.burst !== undefined && this.burst.live.size < BURST_LIVE_LIMIT) this.burst.live.add(cursor);
  }

  /** No frame of the socket waits any more: the burst is over. */
  burstOver(): void {
    this.burst = undefined;
  }

  /** Whether nothing is left here: no stream resuming or at its seam, no burst. */
  done(): boolean {
    return this.seams === undefined && this.burst === undefined;
  }

  /**
   * A stream unsubscribed: its seam goes too, lest a later subscription find it, and a replay in
   * progress stops before its next page (an unsubscribed stream costs nothing more).
   */
  forget(key: StreamKey): void {
    this.end(key);
  }

  /**
   * Replays what `stream` missed since `since`, then leaves it live. Never rejects. With `pending`,
   * nothing of the stream goes out before the first page's owner check has granted it.
   */
  resume(subscription: ResumableSubscription, stream: ReplayStream, since: string, pending?: PendingSubscribe): Promise<void> {
    const key = streamKey(stream);
    const seam: Seam & { replaying: true } = { replaying: true, aside: [], asideBytes: 0, overflowed: false };
    (this.seams ??= new Map()).set(key, seam);
    const burst = (this.burst ??= { live: new Set(), tasks: new Map(), all: undefined });
    const taskId = stream.kind === 'all' ? undefined : stream.taskId;
    const { history, out, socket } = this;
    // Unsubscribed, or resumed again (a new seam took this one's place): this replay stops.
    const abandoned = () => !socket.isOpen() || this.seams?.get(key) !== seam;
    const grant = () => {
      pending?.granted();
      pending = undefined;
    };
    // Without a replay the client refetches: the stream is live from here.
    const resync = (reason: ResyncReason) => {
      this.end(key);
      // `since` was no usable start: a later `lagged` points at where the live stream began.
      if (subscription === 'subscribeOutput') out.startOutput(taskId!, history.head());
      out.control(this.frames.resyncRequired(subscription, taskId, reason));
      this.metrics.sent('resyncRequired');
      // Live from here: what came live meanwhile follows.
      if (!seam.overflowed) sendAside(undefined);
    };
    /** Sends the live frames set aside that come after `floor` (all of them: undefined), in order; answers the new floor. */
    const sendAside = (floor: string | undefined): string | undefined => {
      let last = floor;
      for (const aside of seam.aside) {
        if (last !== undefined && history.compare(aside.cursor, last) <= 0) continue;
        last = aside.cursor;
        if (aside.kind === 'output') out.output(aside.taskId, aside.frame, aside.cursor);
        else this.sendLiveUpdate(burst, aside);
      }
      seam.aside = [];
      return last;
    };
    /**
     * A task's replay ends unsent (refused, or the task hidden), which `tell` says; then the updates
     * it set aside that the socket's `subscribeAll` carries go out live, as they would have without
     * this replay. The index let each through by the owner it was logged with, the rule
     * `subscribeAll` goes by, and for the principal the last page was read for (a re-authentication
     * reads the page again).
     */
    const endUnsent = (tell: () => void) => {
      this.end(key);
      tell();
      if (stream.kind !== 'update' || !socket.all) return;
      const all = this.seams?.get('all');
      // A replaying `subscribeAll` set them aside too, and sends them itself.
      if (all?.replaying) return;
      for (const aside of seam.aside) {
        if (all === undefined || history.compare(aside.cursor, all.floor) > 0) this.sendLiveUpdate(burst, aside);
      }
      seam.aside = [];
    };
    // `subscribeAll` reads what the principal may see *now*: a re-authentication may change it.
    const current = (): ReplayStream =>
      stream.kind === 'all' ? { kind: 'all', ownerId: socket.principal.admin ? null : socket.principal.ownerId } : stream;
    const run = async (): Promise<void> => {
      let after = since;
      for (let first = true; ;) {
        seam.aside = [];
        seam.asideBytes = 0;
        seam.overflowed = false;
        // Read and checked for this principal: re-authenticated meanwhile, the page is read again
        // for the one the socket has now, before anything of it (or of its failure) goes out.
        const principal = socket.principal;
        let answer: ReplayResult | undefined;
        let failure: { error: unknown } | undefined;
        try {
          answer = await history.replayPage(principal, current(), after, first);
        } catch (error) {
          failure = { error };
        }
        if (abandoned()) return;
        if (socket.principal !== principal) continue;
        if (failure) throw failure.error;
        const result = answer!;
        if (!result.ok) {
          if ('resync' in result) {
            grant();
            return resync(result.resync);
          }
          return endUnsent(() =>
            pending ? pending.refused('hidden') : socket.lostSight(subscription as 'subscribe' | 'subscribeOutput', taskId!),
          );
        }
        first = false;
        grant();
        const { page } = result;
        // Before the first event: the history does not begin at the task's first one.
        if (page.truncated) {
          out.control(this.frames.historyTruncated(subscription as 'subscribe' | 'subscribeOutput', taskId!, page.truncated));
          this.metrics.sent('historyTruncated');
        }
        let count = 0;
        for (const frame of page.frames) {
          if (frame.kind === 'update' && this.hasAlready(burst, frame.taskId, frame.cursor)) continue;
          out.replayed(frame.kind, frame.taskId, frame.frame, frame.cursor);
          count++;
        }
        // A stream replays one kind of event.
        if (count > 0) this.metrics.sent(stream.kind === 'output' ? 'taskOutput' : 'taskUpdated', count);
        after = page.last;
        if (!page.more && !seam.overflowed) break;
        // The next page is read once the client has taken most of this one: bounded memory per socket.
        await out.roomFor(this.settings.pageRoom);
        if (abandoned()) return;
      }
      // Caught up with the last page's snapshot; what came live while it was read is newer than
      // it (or in it): sent now, in order, and the seam moves past it.
      const floor = sendAside(since === HISTORY_START || history.compare(after, since) > 0 ? after : since)!;
      this.seams!.set(key, { replaying: false, floor });
      if (stream.kind === 'update') burst.tasks.set(stream.taskId, floor);
      else if (stream.kind === 'all') burst.all = floor;
    };
    return run().catch((error: unknown) => {
      if (abandoned()) return;
      // The first page's owner check could not be made: fail closed, as a subscribe's lookup does.
      if (pending && error instanceof OwnerLookupUnavailableError) return endUnsent(() => pending!.refused('unavailable', error));
      grant();
      this.onReplayFailed(error);
      resync('unavailable');
    });
  }

  /** A live update set aside goes out, unless an earlier stream of this burst gave it already. */
  private sendLiveUpdate(burst: Burst, aside: Aside): void {
    if (this.hasAlready(burst, aside.taskId, aside.cursor)) return;
    burst.live.add(aside.cursor);
    this.out.update(aside.taskId, aside.frame);
  }

  /** Whether an update is with the client already, by an earlier stream of this burst. */
  private hasAlready(burst: Burst, taskId: string, cursor: string): boolean {
    if (burst.live.has(cursor)) return true;
    const task = burst.tasks.get(taskId);
    if (task !== undefined && this.history.compare(cursor, task) <= 0) return true;
    return burst.all !== undefined && this.history.compare(cursor, burst.all) <= 0;
  }

  private end(key: StreamKey): void {
    this.seams?.delete(key);
    if (this.seams?.size === 0) this.seams = undefined;
  }
}
