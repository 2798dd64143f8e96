/**
 * The one-process bus: events go straight to this process's sockets, and the last `historySize`
 * stay in a ring for `since`. Cursors are `<epoch>.<sequence>`, the epoch drawn at start, so a
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

const CURSOR = /^([0-9a-f]{8})\.([1-9][0-9]{0,15}|0)$/;

export class MemoryBus implements EventBus {
  private readonly epoch = randomBytes(4).toString('hex');
  private sequence = 0;
  /** A ring: entry of sequence s is at (s - 1) % size, for the last `size` sequences. */
  private readonly ring: LoggedEvent[] = [];
  private sink: BusSink | undefined;

  constructor(private readonly size: number) {}

  async start(sink: BusSink): Promise<void> {
    this.sink = sink;
  }

  listening(): boolean {
    return true;
  }

  async publish(entry: BusEntry): Promise<string> {
    const sequence = ++this.sequence;
    const logged = { ...entry, cursor: `${this.epoch}.${sequence}`, publishedAt: Date.now() } as LoggedEvent;
    this.ring[(sequence - 1) % this.size] = logged;
    await this.sink?.([logged]);
    return logged.cursor;
  }

  async replay(stream: ReplayStream, after: string, page: PageSize): Promise<ReplayPage> {
    const match = CURSOR.exec(after);
    if (!match || match[1] !== this.epoch || Number(match[2]) > this.sequence) return { ok: false, resync: 'unknownCursor' };
    const from = Number(match[2]) + 1;
    const oldest = Math.max(1, this.sequence - this.size + 1);
    if (from < oldest) return { ok: false, resync: 'expired' };
    if (page.limit !== undefined) {
      let count = 0;
      for (let s = from; s <= this.sequence; s++)
        if (matches(stream, this.at(s)) && ++count > page.limit) return { ok: false, resync: 'tooFarBehind' };
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
    return { ok: true, events, last: `${this.epoch}.${s - 1}`, more: s <= this.sequence };
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
