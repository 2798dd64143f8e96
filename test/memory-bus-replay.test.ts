/**
 * Unit test of the memory bus's replay (src/bus/memory.ts): a task stream's pages come from that
 * stream's own index of the ring, and must answer exactly what reading the whole ring would —
 * every event of the stream after the cursor that the ring still holds, in order, the limits
 * (`tooFarBehind`, `maxReplay`), `expired` and `retention` included — across the ring's wrap.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { LoggedEvent, PageSize, ReplayStream } from '../src/bus/bus.js';
import { MemoryBus } from '../src/bus/memory.js';
import { toTaskOutputEvent, toTaskUpdateEvent } from '../src/protocol/codec.js';
import { HISTORY_START } from '../src/protocol/wire.js';

const SIZE = 7;
const TASKS = ['a', 'b', 'c'].map((c) => `00000000-0000-4000-8000-00000000000${c}`);

const update = (taskId: string, version: number) => ({
  kind: 'update' as const,
  event: toTaskUpdateEvent({ taskId, ownerId: null, version, status: 'running', updatedFields: ['status'], updatedBy: 'test' }),
});

const output = (taskId: string, content: string) => ({
  kind: 'output' as const,
  event: toTaskOutputEvent({ taskId, ownerId: null, messageType: 'assistant', content, isPartial: false }),
});

/** Every page of a replay, read as a replay reads them; the first answer when it is not ok. */
async function readAll(bus: MemoryBus, stream: ReplayStream, after: string, page: PageSize) {
  const events: string[] = [];
  let truncated: string | undefined;
  for (let cursor = after, first = true; ; first = false) {
    const answer = await bus.replay(stream, cursor, first ? page : { ...page, limit: undefined });
    if (!answer.ok) return { resync: answer.resync };
    if (first) truncated = answer.truncated;
    events.push(...answer.events.map((e) => e.cursor));
    assert.ok(answer.events.length <= page.rows, 'a page holds at most `rows` events');
    if (answer.more) assert.equal(answer.last, answer.events.at(-1)!.cursor, 'a page with more after it ends at its last event');
    else assert.equal(answer.last, bus.head(), 'the last page ends at the head');
    if (!answer.more) return { events, truncated };
    cursor = answer.last;
  }
}

test('a task stream replays from its own events what a scan of the whole ring would, through the wrap', async () => {
  const bus = new MemoryBus(SIZE);
  const logged: LoggedEvent[] = [];
  await bus.start(async (events) => void logged.push(...events));
  const sequence = (cursor: string) => Number(cursor.split('.')[1]);
  const epoch = bus.head().split('.')[0]!;
  // Streams of uneven lengths, interleaved, more events than the ring holds: every stream loses
  // its oldest ones to the wrap at some point.
  const pattern = [0, 0, 1, 0, 2, 1, 0, 0, 2, 2, 0, 1, 0, 0, 0, 2, 1, 1, 0, 2, 0];
  for (const [n, t] of pattern.entries()) {
    await bus.publish(n % 4 === 3 ? output(TASKS[t]!, `x${n}`) : update(TASKS[t]!, n + 1));
    const head = logged.length;
    const oldest = Math.max(1, head - SIZE + 1);
    for (const taskId of TASKS) {
      for (const kind of ['update', 'output'] as const) {
        const stream = { kind, taskId } as ReplayStream;
        const held = logged.filter((e, i) => i + 1 >= oldest && e.kind === kind && e.event.taskId === taskId).map((e) => e.cursor);
        for (const rows of [1, 2, 5]) {
          for (const limit of [undefined, 1, 3]) {
            const page = { rows, bytes: 1 << 20, limit };
            // From every cursor still usable (the one right before the ring's oldest included).
            for (let after = oldest - 1; after <= head; after++) {
              const expected = held.filter((c) => sequence(c) > after);
              const got = await readAll(bus, stream, `${epoch}.${after}`, page);
              if (limit !== undefined && expected.length > limit) assert.deepEqual(got, { resync: 'tooFarBehind' });
              else assert.deepEqual(got, { events: expected, truncated: undefined }, `${kind} ${taskId} after ${after}, rows ${rows}`);
            }
            // Older than the ring: expired.
            if (oldest > 1) assert.deepEqual(await readAll(bus, stream, `${epoch}.${oldest - 2}`, page), { resync: 'expired' });
            // From the start: what the ring holds, the newest `limit` of it past the limit.
            const fromStart = await readAll(bus, stream, HISTORY_START, page);
            const lostSome = logged.slice(0, oldest - 1).some((e) => e.kind === kind && e.event.taskId === taskId);
            const newest = limit !== undefined && held.length > limit ? held.slice(-limit) : held;
            const truncated = limit !== undefined && held.length > limit ? 'maxReplay' : lostSome ? 'retention' : undefined;
            assert.deepEqual(fromStart, { events: newest, truncated }, `${kind} ${taskId} from the start`);
          }
        }
      }
    }
  }
});
