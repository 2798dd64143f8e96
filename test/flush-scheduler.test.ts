/**
 * Unit test of the flush scheduler's join: a socket reuses the previous socket's joined buffer
 * only when its frames are the very same, in the same order.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FlushScheduler } from '../src/core/flush-scheduler.js';

test('join reuses the last buffer for the same frames only', () => {
  const scheduler = new FlushScheduler();
  const [x, y, z] = ['x1', 'y22', 'z22'].map((s) => Buffer.from(s));
  const first = scheduler.join([x!, y!], 5);
  assert.equal(first.toString(), 'x1y22');
  assert.equal(scheduler.join([x!, y!], 5), first);
  // Same count and length, other frames; then the same frames in another order.
  assert.equal(scheduler.join([x!, z!], 5).toString(), 'x1z22');
  assert.equal(scheduler.join([z!, x!], 5).toString(), 'z22x1');
  // A frame with equal bytes is still another frame: its bytes are not trusted to be the same later.
  assert.notEqual(scheduler.join([z!, Buffer.from('x1')], 5), scheduler.join([z!, x!], 5));
});

test("stretches of a turn's frames: a queue extends its stretch only with the turn's next frame", () => {
  const scheduler = new FlushScheduler();
  const [a, b, c, d] = ['a', 'bb', 'c', 'dd'].map((s) => Buffer.from(s));
  // Queues take each event in turn: a second queue taking the same frames follows the first one's entries.
  const first = scheduler.start(a!);
  const second = scheduler.start(a!);
  assert.equal(second.start, first.start);
  assert.ok(scheduler.extend(first, b!));
  assert.ok(scheduler.extend(second, b!));
  assert.ok(scheduler.extend(second, c!), 'at the end of the turn: the frame is added');
  assert.equal(scheduler.extend(first, d!), false, 'the turn went on with c: d cannot follow b');
  assert.ok(scheduler.extend(first, c!));
  // The same stretch is joined once; another stretch is joined apart.
  const joined = scheduler.joinRun(first, 4);
  assert.equal(joined.toString(), 'abbc');
  assert.equal(scheduler.joinRun(second, 4), joined);
  const third = scheduler.start(b!);
  assert.ok(scheduler.extend(third, c!));
  assert.equal(scheduler.joinRun(third, 3).toString(), 'bbc');
});

test("a stretch from before the scheduler's flush is not extended by the next turn's frames", async () => {
  const scheduler = new FlushScheduler();
  const [a, b] = ['a', 'b'].map((s) => Buffer.from(s));
  const flushed: string[] = [];
  const run = scheduler.start(a!);
  let late: boolean | undefined;
  scheduler.mark({
    flush() {
      // A frame queued while the turn's queues write (a socket that caught up) belongs to the next turn.
      late = scheduler.extend(run, b!);
      flushed.push('x');
    },
  });
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(flushed, ['x']);
  assert.equal(late, false);
  assert.deepEqual(scheduler.start(b!), { frames: [b], start: 0, end: 1 });
});
