/**
 * Writes each socket that has frames queued once per loop turn, after the turn's reads: a burst
 * of events costs one write per socket, not one per frame.
 */

/** A stretch of one turn's frames, `start` to `end` (exclusive), that one queue holds. */
export interface Run {
  readonly frames: Buffer[];
  readonly start: number;
  end: number;
}

/** A queue of frames for one socket; the scheduler tells it when to write them. */
export interface Flushable {
  flush(): void;
}

export class FlushScheduler {
  private dirty: Flushable[] = [];
  private scheduled = false;
  // Two lists used in turn, so that a flush allocates nothing however many sockets it writes.
  private spare: Flushable[] = [];
  /** The frames last joined into one buffer, and that buffer, for the next socket to reuse. */
  private joinedFrames: Buffer[] = [];
  private joinedBuffer: Buffer | undefined;
  /**
   * This turn's frames, in the order queues first took them. A queue whose frames of the turn are
   * a stretch of this list (a broadcast: every socket takes the same events) holds only where its
   * stretch starts and ends: no list of its own to fill, and one join for all such queues.
   */
  private frames: Buffer[] = [];
  /** The stretch last joined, and its buffer. */
  private joinedRun: { frames: Buffer[]; start: number; end: number; buffer: Buffer } | undefined;

  mark(queue: Flushable): void {
    this.dirty.push(queue);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.flush);
    }
  }

  /** This turn's frames: where a new stretch of them starts, with `frame`. */
  start(frame: Buffer): Run {
    const frames = this.frames;
    // Sockets that take the same event one after another start at its one entry.
    if (frames[frames.length - 1] !== frame) frames.push(frame);
    return { frames, start: frames.length - 1, end: frames.length };
  }

  /** Adds `frame` to the stretch `run` when it is the turn's next frame after it; false when it is not. */
  extend(run: Run, frame: Buffer): boolean {
    const { frames, end } = run;
    if (end < frames.length) {
      if (frames[end] !== frame) return false;
    } else if (frames !== this.frames) return false;
    else frames.push(frame);
    run.end = end + 1;
    return true;
  }

  /** A stretch as one buffer; the next queue with the same stretch gets the same buffer. */
  joinRun(run: Run, bytes: number): Buffer {
    const last = this.joinedRun;
    if (last && last.frames === run.frames && last.start === run.start && last.end === run.end) return last.buffer;
    const buffer = Buffer.concat(run.frames.slice(run.start, run.end), bytes);
    this.joinedRun = { frames: run.frames, start: run.start, end: run.end, buffer };
    return buffer;
  }

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
    // Frames queued while these queues write (a socket that caught up) are the next turn's.
    this.frames = [];
    for (const queue of dirty) queue.flush();
    dirty.length = 0;
    this.spare = dirty;
    this.joinedFrames = [];
    this.joinedBuffer = undefined;
    this.joinedRun = undefined;
  };
}
