/**
 * The frames headed to one socket. They leave in one write per loop turn, and the socket's
 * backlog (`bufferedAmount` plus what waits here) decides what happens when a client reads slower
 * than we write: updates are conflated to the latest per task, output is dropped and reported as
 * `lagged` once the socket drains, and past the hard limit or the time limit the socket is closed.
 */
import type { Socket } from 'node:net';
import WebSocket from 'ws';
import { encodeLagged } from '../protocol/codec.js';

const { OPEN } = WebSocket;

export interface BackpressureLimits {
  soft: number;
  hard: number;
  timeoutMs: number;
}

/** What an Outbound reports; the hub turns it into `app.mesh.events`. */
export interface BackpressureObserver {
  /** The socket went over the soft limit and is holding frames back. */
  backedUp(): void;
  /** It drained: `superseded` updates were conflated away, output of some tasks was reported lagged. */
  drained(superseded: number, lagged: ReadonlyMap<string, number>): void;
  /** It must go: over the hard limit, or backed up for too long. Called once. */
  slow(why: 'buffer' | 'timeout'): void;
  /** This many bytes and frames went to the socket in one write. */
  wrote(bytes: number, frames: number): void;
}

/** Collects the sockets that have frames waiting and writes each once, after this loop turn's reads. */
export class FlushScheduler {
  private dirty: Outbound[] = [];
  private scheduled = false;

  mark(outbound: Outbound): void {
    this.dirty.push(outbound);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.flush);
    }
  }

  // Two lists used in turn, so that a flush allocates nothing however many sockets it writes.
  private spare: Outbound[] = [];
  /** The frames last joined into one buffer, and that buffer, for the next socket to reuse. */
  private joinedFrames: Buffer[] = [];
  private joinedBuffer: Buffer | undefined;

  /**
   * `frames` as one buffer. Sockets on the same subscriptions get the same frames in the same
   * order in a turn, and are marked one after another: the previous socket's join is reused.
   */
  join(frames: readonly Buffer[], bytes: number): Buffer {
    const last = this.joinedFrames;
    let same = this.joinedBuffer !== undefined && last.length === frames.length;
    for (let i = 0; same && i < frames.length; i++) same = last[i] === frames[i];
    if (same) return this.joinedBuffer!;
    this.joinedFrames = frames.slice();
    this.joinedBuffer = Buffer.concat(frames, bytes);
    return this.joinedBuffer;
  }

  private readonly flush = (): void => {
    const dirty = this.dirty;
    this.dirty = this.spare;
    this.scheduled = false;
    for (const outbound of dirty) outbound.flush();
    dirty.length = 0;
    this.spare = dirty;
    this.joinedFrames = [];
    this.joinedBuffer = undefined;
  };
}

/**
 * Up to this many bytes, a turn's frames for one socket are joined into one buffer (one write, no
 * per-frame stream bookkeeping); above it, copying costs more than it saves and they are corked.
 */
const JOIN_LIMIT = 256 * 1024;

const OUTBOUND = Symbol('mesh outbound');
type Drained = Socket & { [OUTBOUND]: Outbound };

function onDrain(this: Drained): void {
  const outbound = this[OUTBOUND];
  outbound.release();
  outbound.checkRoom();
}

export class Outbound {
  private readonly frames: Buffer[] = [];
  private bytes = 0;
  private scheduled = false;
  private stopped = false;
  // Both made on first use: most sockets are never backed up, and there are many sockets.
  /** Latest update per task while backed up; sent once the socket drains. */
  private conflated: Map<string, Buffer> | undefined;
  /** Output frames dropped per task while backed up; reported as `lagged` once it drains. */
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
  private readonly raw: Socket;

  constructor(
    private readonly socket: WebSocket,
    private readonly limits: BackpressureLimits,
    private readonly scheduler: FlushScheduler,
    private readonly observer: BackpressureObserver,
  ) {
    // ws keeps its net.Socket private; we write prebuilt frames to it and listen for its 'drain'
    // (through a shared listener that finds this queue on the socket, as there are many sockets).
    this.raw = (socket as unknown as { _socket: Socket })._socket;
    (this.raw as Drained)[OUTBOUND] = this;
    this.raw.on('drain', onDrain);
  }

  /** Bytes written but not yet taken by the peer, plus bytes waiting for this turn's flush. */
  backlog(): number {
    return this.socket.bufferedAmount + this.bytes;
  }

  /** Acks and errors: always sent, in order. */
  control(frame: Buffer): void {
    this.push(frame);
  }

  update(taskId: string, frame: Buffer): void {
    const backlog = this.backlog();
    if (this.conflated?.size || backlog >= this.limits.soft) {
      this.conflated ??= new Map();
      const previous = this.conflated.get(taskId);
      if (previous) {
        this.superseded++;
        this.conflatedBytes -= previous.length;
      }
      this.conflated.set(taskId, frame);
      this.conflatedBytes += frame.length;
      // Held updates are memory too: one per task, but tasks are many.
      if (backlog + this.conflatedBytes > this.limits.hard) this.slow('buffer');
      else this.markBackedUp();
      return;
    }
    this.push(frame, backlog);
  }

  output(taskId: string, frame: Buffer, cursor: string): void {
    const backlog = this.backlog();
    // Once a task's output is being dropped, all of it is, until `lagged` has told the client.
    if (this.skipped?.has(taskId) || backlog >= this.limits.soft) {
      this.skipped ??= new Map();
      this.skipped.set(taskId, (this.skipped.get(taskId) ?? 0) + 1);
      this.markBackedUp();
      return;
    }
    (this.lastOutput ??= new Map()).set(taskId, cursor);
    this.push(frame, backlog);
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
   * Resolves once the backlog is under `below` bytes (at once if it is), or the socket is done
   * with: a replay writes a page, then waits for the client to take it, so its memory stays bounded.
   */
  writable(below: number): Promise<void> {
    if (this.stopped || this.backlog() < below) return Promise.resolve();
    return new Promise((resolve) => {
      this.room = { below, resolve };
    });
  }

  checkRoom(): void {
    const room = this.room;
    if (room && (this.stopped || this.backlog() < room.below)) {
      this.room = undefined;
      room.resolve();
    }
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
    const frames = this.frames;
    if (this.stopped || frames.length === 0) return;
    const bytes = this.bytes;
    this.bytes = 0;
    // Past OPEN, ws has sent or answered a close frame: nothing may follow it.
    if (this.socket.readyState === OPEN) {
      // Frames are complete WebSocket frames, built once per event: they go to the TCP socket as
      // they are, in one write per socket per turn, without ws re-framing each for each socket.
      const raw = this.raw;
      if (frames.length === 1) raw.write(frames[0]!);
      else if (bytes <= JOIN_LIMIT) raw.write(this.scheduler.join(frames, bytes));
      else {
        raw.cork();
        for (const frame of frames) raw.write(frame);
        raw.uncork();
      }
    }
    this.observer.wrote(bytes, frames.length);
    // The stream holds the buffers now; the list is reused, not reallocated, every turn.
    frames.length = 0;
    if (this.socket.readyState !== OPEN) return;
    if (this.socket.bufferedAmount > this.limits.hard) this.slow('buffer');
    else {
      this.release();
      // A write the kernel took whole emits no 'drain': a replay waiting for room learns it here.
      this.checkRoom();
    }
  }

  /** Called by the heartbeat: a socket can stay backed up without any new event to notice it. */
  checkStalled(now: number): void {
    if (this.backedUpSince !== 0 && now - this.backedUpSince > this.limits.timeoutMs) this.slow('timeout');
  }

  /** Drops everything still waiting; nothing is sent after this. */
  stop(): void {
    this.stopped = true;
    this.frames.length = 0;
    this.bytes = 0;
    this.conflated = undefined;
    this.conflatedBytes = 0;
    this.skipped = undefined;
    this.lastOutput = undefined;
    this.checkRoom();
  }

  /** `backlog` is the backlog before this frame, when the caller has just read it. */
  private push(frame: Buffer, backlog = this.backlog()): void {
    if (this.stopped) return;
    this.frames.push(frame);
    this.bytes += frame.length;
    if (backlog + frame.length > this.limits.hard) {
      this.slow('buffer');
      return;
    }
    if (!this.scheduled) {
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

  /** Once the backlog is under the soft limit again, sends what was held back. */
  release(): void {
    if (this.stopped || this.backedUpSince === 0 || this.backlog() >= this.limits.soft) return;
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
      // A task unsubscribed meanwhile has no cursor left, and no stream to resume.
      if (cursor !== undefined) this.push(encodeLagged(taskId, count, cursor));
    }
    this.observer.drained(superseded, skipped);
  }

  private slow(why: 'buffer' | 'timeout'): void {
    if (this.stopped) return;
    this.stop();
    this.observer.slow(why);
  }
}
