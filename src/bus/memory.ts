/**
 * The one-process bus: events go straight to this process's sockets, and the last `historySize`
 * stay in a ring for `since` (a ring for the whole process: a busy task pushes a quiet one's
 * events out; the PostgreSQL bus keeps them per task). Cursors are `<epoch>.<sequence>`, the epoch drawn at start, so a
 * cursor from another process or an earlier run is told apart rather than misread.
 */
import { randomBytes } from 'node:crypto';
import {
  matches,
  type BusEntry,
  type BusSink,
  type EventBus,
  type LoggedEvent,
  type PageSize,
  type ReplayPage,
  type ReplayStream,
} from './bus.js';
import { HISTORY_START, type TruncatedReason } from '../protocol/wire.js';

const CURSOR = /^([0-9a-f]{8})\.([1-9][0-9]{0,15}|0)$/;

export class MemoryBus implements EventBus {
  private readonly epoch = randomBytes(4).toString('hex');
  private sequence = 0;
  /** A ring: entry of sequence s is at (s - 1) % size, for the last `size` sequences. */
  private readonly ring: LoggedEvent[] = [];
  private sink: BusSink | undefined;
  /** Published, not yet logged, and the promise of their logging and hand-over (see `logPending`). */
  private pending: BusEntry[] = [];
  private handOver: Promise<LoggedEvent[]> | undefined;
  /**
   * Per task stream, the sequence of its first event: a history from HISTORY_START tells whether
   * the ring still holds it. Bounded: when it outgrows the ring, the entries of streams whose
   * first event left the ring go, and from then on a stream seen for the first time may be one of
   * those, so its history counts as truncated (0): a false marker, never a silent gap.
   */
  private readonly firsts = { update: new Map<string, number>(), output: new Map<string, number>() };
  private forgot = false;
  /**
   * Per task stream, the sequences of its events still in the ring, oldest first: a task's replay
   * reads its own events, not the whole ring (a reconnect storm of N resumes would otherwise read
   * the ring N times). All streams' lists hold together as many as the ring.
   */
  private readonly streams = { update: new Map<string, number[]>(), output: new Map<string, number[]>() };

  constructor(private readonly size: number) {}

  async start(sink: BusSink): Promise<void> {
    this.sink = sink;
  }

  listening(): boolean {
    return true;
  }

  async publish(entry: BusEntry): Promise<string> {
    const at = this.pending.length;
    this.pending.push(entry);
    const logged = await (this.handOver ??= Promise.resolve().then(() => this.logPending()));
    return logged[at]!.cursor;
  }

  /**
   * The publishes of one go (a loop of publishes), logged in publish order once the loop is done
   * and handed to the sink together: one batch for the delivery. Logged only then, so that the
   * ring, `head()` and the sockets move as one: a subscribe answered in between starts its stream
   * before events its socket is yet to get, never after them.
   */
  private async logPending(): Promise<LoggedEvent[]> {
    const entries = this.pending;
    this.pending = [];
    this.handOver = undefined;
    const logged = entries.map((entry) => this.log(entry));
    await this.sink?.(logged);
    return logged;
  }

  private log(entry: BusEntry): LoggedEvent {
    const sequence = ++this.sequence;
    // Built field by field: a spread followed by more fields is V8's slow object copy (≈2 µs an event).
    const logged = { kind: entry.kind, event: entry.event, cursor: `${this.epoch}.${sequence}`, publishedAt: Date.now() } as LoggedEvent;
    const slot = (sequence - 1) % this.size;
    const evicted = this.ring[slot];
    if (evicted !== undefined) {
      // The oldest event of its stream: the ring keeps events in sequence order.
      const streams = this.streams[evicted.kind];
      const kept = streams.get(evicted.event.taskId)!;
      kept.shift();
      if (kept.length === 0) streams.delete(evicted.event.taskId);
    }
    this.ring[slot] = logged;
    // Maps per kind, keyed by the task id itself: no key string to build and hash per event.
    const { taskId } = entry.event;
    const streams = this.streams[entry.kind];
    const kept = streams.get(taskId);
    if (kept === undefined) streams.set(taskId, [sequence]);
    else kept.push(sequence);
    const firsts = this.firsts[entry.kind];
    if (!firsts.has(taskId)) {
      if (this.firsts.update.size + this.firsts.output.size >= 4 * this.size) this.forgetGone();
      firsts.set(taskId, this.forgot ? 0 : sequence);
    }
    return logged;
  }

  async replay(stream: ReplayStream, after: string, page: PageSize): Promise<ReplayPage> {
    const oldest = this.oldest();
    let from: number;
    let truncated: TruncatedReason | undefined;
    if (after === HISTORY_START && stream.kind !== 'all') {
      from = oldest;
      const first = this.firsts[stream.kind].get(stream.taskId);
      if (first === undefined ? this.forgot : first < oldest) truncated = 'retention';
    } else {
      const match = CURSOR.exec(after);
      if (!match || match[1] !== this.epoch || Number(match[2]) > this.sequence) return { ok: false, resync: 'unknownCursor' };
      from = Number(match[2]) + 1;
      if (from < oldest) return { ok: false, resync: 'expired' };
    }
    if (stream.kind !== 'all') return this.replayTask(stream, after, from, truncated, page);
    if (page.limit !== undefined) {
      let count = 0;
      for (let s = this.sequence; s >= from; s--) {
        if (!matches(stream, this.at(s)) || ++count <= page.limit) continue;
        if (after !== HISTORY_START) return { ok: false, resync: 'tooFarBehind' };
        // From the start, the newest `limit` events: a transcript shows its end.
        from = s + 1;
        truncated = 'maxReplay';
        break;
      }
    }
    const events: LoggedEvent[] = [];
    let bytes = 0;
    let s = from;
    for (; s <= this.sequence && events.length < page.rows && (events.length === 0 || bytes < page.bytes); s++) {
      const e = this.at(s);
      if (!matches(stream, e)) continue;
      events.push(e);
      bytes += e.kind === 'output' ? e.event.content.length : 64;
    }
    // The last page ends at the head: nothing of the stream comes before it any more.
    const more = s <= this.sequence;
    const result: ReplayPage = { ok: true, events, last: `${this.epoch}.${more ? s - 1 : this.sequence}`, more };
    if (truncated) result.truncated = truncated;
    return result;
  }

  /** A task stream's page, from its own events (`from`: the first sequence it may start at). */
  private replayTask(
    stream: Extract<ReplayStream, { kind: 'update' | 'output' }>,
    after: string,
    from: number,
    truncated: TruncatedReason | undefined,
    page: PageSize,
  ): ReplayPage {
    const kept = this.streams[stream.kind].get(stream.taskId) ?? [];
    // The first of the stream's events at or after `from`.
    let low = 0;
    for (let high = kept.length; low < high;) {
      const middle = (low + high) >>> 1;
      if (kept[middle]! < from) low = middle + 1;
      else high = middle;
    }
    if (page.limit !== undefined && kept.length - low > page.limit) {
      if (after !== HISTORY_START) return { ok: false, resync: 'tooFarBehind' };
      // From the start, the newest `limit` events: a transcript shows its end.
      low = kept.length - page.limit;
      truncated = 'maxReplay';
    }
    const events: LoggedEvent[] = [];
    let bytes = 0;
    let i = low;
    for (; i < kept.length && events.length < page.rows && (events.length === 0 || bytes < page.bytes); i++) {
      const e = this.at(kept[i]!);
      events.push(e);
      bytes += e.kind === 'output' ? e.event.content.length : 64;
    }
    // The last page ends at the head: nothing of the stream comes before it any more.
    const more = i < kept.length;
    const result: ReplayPage = { ok: true, events, last: `${this.epoch}.${more ? kept[i - 1]! : this.sequence}`, more };
    if (truncated) result.truncated = truncated;
    return result;
  }

  private oldest(): number {
    return Math.max(1, this.sequence - this.size + 1);
  }

  private forgetGone(): void {
    const oldest = this.oldest();
    for (const firsts of [this.firsts.update, this.firsts.output])
      for (const [taskId, first] of firsts) if (first < oldest) firsts.delete(taskId);
    this.forgot = true;
  }

  private at(sequence: number): LoggedEvent {
    return this.ring[(sequence - 1) % this.size]!;
  }

  heldBackSeconds(): number {
    return 0;
  }

  head(): string {
    return `${this.epoch}.${this.sequence}`;
  }

  compare(a: string, b: string): number {
    const x = CURSOR.exec(a);
    const y = CURSOR.exec(b);
    if (!x || !y || x[1] !== this.epoch || y[1] !== this.epoch) return 0;
    return Number(x[2]) - Number(y[2]);
  }

  async stop(): Promise<void> {
    this.sink = undefined;
  }
}
