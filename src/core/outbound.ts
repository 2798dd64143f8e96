/**
 * The frames headed to one socket. They leave in one write per loop turn, and the socket's
 * pending bytes (written but not taken, plus what waits here) decide what happens when a client
 * reads slower than we write: updates are conflated to the latest per task, output is dropped
 * and reported as `lagged` once the socket catches up, and past the hard limit or the time limit
 * the socket is closed.
 */
import type { FlushScheduler, Run } from './flush-scheduler.js';
import type { Frames } from './frames.js';
import type { ClientSocket } from './ports.js';
import type { BatchShare } from './subscription-index.js';

export interface BackpressureLimits {
  /** Pending bytes above which output is dropped and updates conflated. */
  soft: number;
  /** Pending bytes above which the socket is closed. */
  hard: number;
  /** How long (ms) a socket may stay over `soft` before it is closed. */
  timeoutMs: number;
}

/** What an Outbound reports; the connection turns it into `app.mesh.events` and metrics. */
export interface BackpressureObserver {
  /** The socket went over the soft limit: updates are conflated, output dropped. */
  backedUp(): void;
  /** It caught up: `superseded` updates were conflated away, output of some tasks was reported lagged. */
  caughtUp(superseded: number, lagged: ReadonlyMap<string, number>): void;
  /** It must go: over the hard limit, or backed up for too long. Called once. */
  slow(why: 'buffer' | 'timeout'): void;
  /** This many bytes and frames went to the socket in one write. */
  wrote(bytes: number, frames: number): void;
}

/**
 * Up to this many bytes, a turn's frames for one socket are joined into one buffer (one write, no
 * per-frame stream bookkeeping); above it, copying costs more than it saves and they are corked.
 */
const JOIN_LIMIT = 256 * 1024;

export class Outbound {
  /** This turn's frames, while they are a stretch of the scheduler's (see FlushScheduler.start). */
  private run: Run | undefined;
  /** Otherwise, this turn's frames as a list. */
  private readonly queued: Buffer[] = [];
  private queuedBytes = 0;
  private scheduled = false;
  /**
   * The socket's own pending bytes, read when this turn's first frame was queued; stands for them
   * while `scheduled`. Reading them (ws walks to the TCP socket's stream state) cost more than all
   * the rest of a delivery when done per frame. Until this turn's flush nothing of ours is written
   * to the socket, so they can only have shrunk meanwhile (the kernel took some): counting them as
   * they were is the cautious side. Only ws's own control frames (a pong, a ping: at most 127
   * bytes each) can add to them in between, and the flush checks the hard limit on a fresh read.
   */
  private socketBytes = 0;
  private stopped = false;
  // Both made on first use: most sockets are never backed up, and there are many sockets.
  /** Latest update per task while backed up; sent once the socket catches up. */
  private conflated: Map<string, Buffer> | undefined;
  /** Output frames dropped per task while backed up; reported as `lagged` once it catches up. */
  private skipped: Map<string, number> | undefined;
  /**
   * Per followed task, the cursor of the last output that was not dropped (or where its stream
   * started): what `lagged` tells the client to resume from.
   */
  private lastOutput: Map<string, string> | undefined;
  private conflatedBytes = 0;
  private superseded = 0;
  private backedUpSince = 0;
  /** A replay waiting for room before its next page (one at a time: a socket's replays run in turn). */
  private room: { below: number; resolve: () => void } | undefined;

  constructor(
    private readonly socket: ClientSocket,
    private readonly limits: BackpressureLimits,
    private readonly scheduler: FlushScheduler,
    private readonly frames: Frames,
    private readonly observer: BackpressureObserver,
  ) {}

  /** Bytes written but not yet taken by the peer, plus bytes waiting for this turn's flush. */
  pendingBytes(): number {
    return (this.scheduled ? this.socketBytes : this.socket.bufferedAmount()) + this.queuedBytes;
  }

  /** Acks and errors: always sent, in order. */
  control(frame: Buffer): void {
    this.push(frame);
  }

  update(taskId: string, frame: Buffer): void {
    const pending = this.pendingBytes();
    if (this.conflated?.size || pending >= this.limits.soft) {
      this.conflated ??= new Map();
      const previous = this.conflated.get(taskId);
      if (previous) {
        this.superseded++;
        this.conflatedBytes -= previous.length;
      }
      this.conflated.set(taskId, frame);
      this.conflatedBytes += frame.length;
      // Conflated updates are memory too: one per task, but tasks are many.
      if (pending + this.conflatedBytes > this.limits.hard) this.slow('buffer');
      else this.markBackedUp();
      return;
    }
    this.push(frame, pending);
  }

  /**
   * Updates `from` to `to` of a delivery batch's shared lists, as that many `update`s would take
   * them. When they all fit under the soft limit, as they mostly do, the queue holds where they
   * start and end in the shared list: one step for the lot, and at the flush one join shared by
   * every socket that took the same stretch.
   */
  updates(share: BatchShare, from: number, to: number, bytes: number): void {
    if (this.stopped) return;
    const pending = this.pendingBytes();
    if (this.conflated?.size || pending + bytes >= this.limits.soft) {
      for (let i = from; i < to; i++) this.update(share.taskIds[i]!, share.frames[i]!);
      return;
    }
    const { run, queued } = this;
    if (run !== undefined && run.frames === share.frames && run.end === from) run.end = to;
    else if (run === undefined && queued.length === 0) this.run = { frames: share.frames, start: from, end: to };
    else {
      for (let i = from; i < to; i++) this.push(share.frames[i]!);
      return;
    }
    this.queuedBytes += bytes;
    this.scheduleFlush(pending, bytes);
  }

  output(taskId: string, frame: Buffer, cursor: string): void {
    const pending = this.pendingBytes();
    // Once a task's output is being dropped, all of it is, until `lagged` has told the client.
    if (this.skipped?.has(taskId) || pending >= this.limits.soft) {
      this.skipped ??= new Map();
      this.skipped.set(taskId, (this.skipped.get(taskId) ?? 0) + 1);
      this.markBackedUp();
      return;
    }
    (this.lastOutput ??= new Map()).set(taskId, cursor);
    this.push(frame, pending);
  }

  /**
   * A replayed event: the client asked for it, so the soft limit does not drop it (it would only
   * be asked for again); the hard limit still applies.
   */
  replayed(kind: 'update' | 'output', taskId: string, frame: Buffer, cursor: string): void {
    if (kind === 'output') (this.lastOutput ??= new Map()).set(taskId, cursor);
    this.push(frame);
  }

  /**
   * Resolves once fewer than `below` bytes are pending (at once if so), or the socket is done
   * with: a replay writes a page, then waits for the client to take it, so its memory stays bounded.
   */
  roomFor(below: number): Promise<void> {
    if (this.stopped || this.pendingBytes() < below) return Promise.resolve();
    return new Promise((resolve) => {
      this.room = { below, resolve };
    });
  }

  /** The socket took what was written: catch up, and wake a replay waiting for room. */
  socketWritable(): void {
    this.catchUp();
    this.checkRoom();
  }

  /** A task's output stream starts (or restarts) at `cursor`. */
  startOutput(taskId: string, cursor: string): void {
    (this.lastOutput ??= new Map()).set(taskId, cursor);
  }

  forgetOutput(taskId: string): void {
    this.lastOutput?.delete(taskId);
  }

  flush(): void {
    this.scheduled = false;
    const { run, queued } = this;
    this.run = undefined;
    if (this.stopped || (run === undefined && queued.length === 0)) return;
    const bytes = this.queuedBytes;
    this.queuedBytes = 0;
    const count = run === undefined ? queued.length : run.end - run.start;
    // Once a close frame went either way, nothing may follow it.
    if (this.socket.isOpen()) {
      if (run === undefined) this.write(queued, bytes);
      else if (count === 1) this.socket.write(run.frames[run.start]!);
      else if (bytes <= JOIN_LIMIT) this.socket.write(this.scheduler.joinRun(run, bytes));
      else this.socket.writeAll(run.frames.slice(run.start, run.end));
    }
    this.observer.wrote(bytes, count);
    // The socket holds the buffers now; the list is reused, not reallocated, every turn.
    queued.length = 0;
    if (!this.socket.isOpen()) return;
    if (this.socket.bufferedAmount() > this.limits.hard) this.slow('buffer');
    // A write the kernel took whole makes the socket report nothing: a replay waiting for room learns it here.
    else this.socketWritable();
  }

  private write(queued: Buffer[], bytes: number): void {
    if (queued.length === 1) this.socket.write(queued[0]!);
    else if (bytes <= JOIN_LIMIT) this.socket.write(this.scheduler.join(queued, bytes));
    else this.socket.writeAll(queued);
  }

  /** Called by the sweep: a socket can stay backed up without any new event to notice it by. */
  checkStalled(now: number): void {
    if (this.backedUpSince !== 0 && now - this.backedUpSince > this.limits.timeoutMs) this.slow('timeout');
  }

  /** Drops everything still waiting; nothing is sent after this. */
  stop(): void {
    this.stopped = true;
    this.run = undefined;
    this.queued.length = 0;
    this.queuedBytes = 0;
    this.conflated = undefined;
    this.conflatedBytes = 0;
    this.skipped = undefined;
    this.lastOutput = undefined;
    this.checkRoom();
  }

  private checkRoom(): void {
    const room = this.room;
    if (room && (this.stopped || this.pendingBytes() < room.below)) {
      this.room = undefined;
      room.resolve();
    }
  }

  /** `pending` is the pending bytes before this frame, when the caller has just read them. */
  private push(frame: Buffer, pending = this.pendingBytes()): void {
    if (this.stopped) return;
    const { run, queued } = this;
    if (run !== undefined) {
      if (!this.scheduler.extend(run, frame)) {
        // Not the turn's next frame: from here on, a list of its own.
        for (let i = run.start; i < run.end; i++) queued.push(run.frames[i]!);
        queued.push(frame);
        this.run = undefined;
      }
    } else if (queued.length === 0) this.run = this.scheduler.start(frame);
    else queued.push(frame);
    this.queuedBytes += frame.length;
    if (pending + frame.length > this.limits.hard) {
      this.slow('buffer');
      return;
    }
    this.scheduleFlush(pending, frame.length);
  }

  /** `added` bytes were just queued on `pending`: the turn's flush is due. */
  private scheduleFlush(pending: number, added: number): void {
    if (!this.scheduled) {
      // What was pending before this turn's first frame: the socket's own bytes.
      this.socketBytes = pending - (this.queuedBytes - added);
      this.scheduled = true;
      this.scheduler.mark(this);
    }
  }

  private markBackedUp(): void {
    const now = performance.now();
    if (this.backedUpSince === 0) {
      this.backedUpSince = now;
      this.observer.backedUp();
    } else this.checkStalled(now);
  }

  /** Once under the soft limit again, sends what backing up kept: the latest updates, then `lagged`. */
  private catchUp(): void {
    if (this.stopped || this.backedUpSince === 0 || this.pendingBytes() >= this.limits.soft) return;
    this.backedUpSince = 0;
    const conflated = this.conflated ?? new Map<string, Buffer>();
    const skipped = this.skipped ?? new Map<string, number>();
    const superseded = this.superseded;
    this.conflated = undefined;
    this.skipped = undefined;
    this.conflatedBytes = 0;
    this.superseded = 0;
    for (const frame of conflated.values()) this.push(frame);
    for (const [taskId, count] of skipped) {
      const cursor = this.lastOutput?.get(taskId);
      // A task unsubscribed meanwhile has no cursor left, and no stream to resume: no `lagged`.
      if (cursor === undefined) skipped.delete(taskId);
      else this.push(this.frames.lagged(taskId, count, cursor));
    }
    this.observer.caughtUp(superseded, skipped);
  }

  private slow(why: 'buffer' | 'timeout'): void {
    if (this.stopped) return;
    this.stop();
    this.observer.slow(why);
  }
}
