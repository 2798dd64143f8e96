/**
 * Unit test of the replay page's time limit (src/core/history.ts): a bus that never answers
 * rejects the page once PAGE_TIMEOUT_MS (10 s) has passed, and frees its slot for the next reader.
 */
import assert from 'node:assert/strict';
import { mock, test } from 'node:test';
import type { EventBus, ReplayPage } from '../src/bus/bus.js';
import { EventHistory } from '../src/core/history.js';
import { OwnerDirectory } from '../src/core/owners.js';

test('a replay page the bus does not answer within 10 s rejects, and the next page gets the slot', async () => {
  mock.timers.enable({ apis: ['setTimeout'] });
  try {
    const answers: ((page: ReplayPage) => void)[] = [];
    const bus = { replay: () => new Promise<ReplayPage>((resolve) => answers.push(resolve)) } as unknown as EventBus;
    const owners = new OwnerDirectory(async () => new Map(), 1000);
    const history = new EventHistory(
      bus,
      owners,
      () => undefined,
      () => false,
      { maxEvents: 10, concurrency: 1, pageBytes: 1024 },
    );
    const admin = { ownerId: null, admin: true };
    const stream = { kind: 'all', ownerId: null } as const;
    const first = history.replayPage(admin, stream, 'x.1', true);
    const second = history.replayPage(admin, stream, 'x.1', true);
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(answers.length, 1, 'one page at a time (concurrency 1)');
    mock.timers.tick(9_999);
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(answers.length, 1, 'not yet late');
    mock.timers.tick(1);
    await assert.rejects(first, /a replay page took longer than 10000 ms/);
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(answers.length, 2, 'the late page gave its slot to the next');
    answers[1]!({ ok: true, events: [], last: 'x.1', more: false });
    assert.deepEqual(await second, { ok: true, page: { frames: [], last: 'x.1', more: false } });
  } finally {
    mock.timers.reset();
  }
});
