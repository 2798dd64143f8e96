/**
 * Writes each socket that has frames queued once per loop turn, after the turn's reads: a burst
 * of events costs one write per socket, not one per frame.
 */

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

  mark(queue: Flushable): void {
    this.dirty.push(queue);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.flush);
    }
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
    for (const queue of dirty) queue.flush();
    dirty.length = 0;
    this.spare = dirty;
    this.joinedFrames = [];
    this.joinedBuffer = undefined;
  };
}
