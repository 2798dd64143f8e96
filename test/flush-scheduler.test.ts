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
