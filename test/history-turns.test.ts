/**
 * Unit test of the replay's turns (src/core/history.ts) on a bus whose pages the test answers:
 * one principal opening histories by the dozen holds at most half the page slots, so another
 * principal's page is read next, not after all of the first one's.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { EventBus, PageSize, ReplayPage, ReplayStream } from '../src/bus/bus.js';
import { EventHistory } from '../src/core/history.js';
import { OwnerDirectory } from '../src/core/owners.js';
import type { Principal } from '../src/core/ports.js';
import { deferred, turn, type Deferred } from './helpers/async.js';

interface Read {
  taskId: string;
  answer: Deferred<ReplayPage>;
}

function setup(concurrency: number) {
  const reads: Read[] = [];
  const bus = {
    replay(stream: ReplayStream, _after: string, _page: PageSize): Promise<ReplayPage> {
      const answer = deferred<ReplayPage>();
      reads.push({ taskId: stream.kind === 'all' ? 'all' : stream.taskId, answer });
      return answer.promise;
    },
  } as unknown as EventBus;
  // Every task belongs to the owner its id starts with.
  const owners = new OwnerDirectory(async (taskIds) => new Map(taskIds.map((id) => [id, id.split('-')[0]!])), 1_000);
  const history = new EventHistory(
    bus,
    owners,
    () => Buffer.from('frame'),
    () => false,
    { maxEvents: 100, concurrency, pageBytes: 1024 },
  );
  return { reads, history };
}

const empty: ReplayPage = { ok: true, events: [], last: 'c', more: false };

test('a principal with 20 histories to read holds half the slots; another principal’s page is read at once', async () => {
  const { reads, history } = setup(4);
  const greedy: Principal = { ownerId: 'greedy', admin: false };
  const other: Principal = { ownerId: 'other', admin: false };
  const greedyPages = Array.from({ length: 20 }, (_, n) =>
    history.replayPage(greedy, { kind: 'output', taskId: `greedy-${n}` }, 'start', true),
  );
  await turn();
  assert.deepEqual(
    reads.map((r) => r.taskId),
    ['greedy-0', 'greedy-1'],
    'two of four slots',
  );
  const otherPage = history.replayPage(other, { kind: 'output', taskId: 'other-0' }, 'start', true);
  await turn();
  assert.deepEqual(
    reads.map((r) => r.taskId),
    ['greedy-0', 'greedy-1', 'other-0'],
    'read beside the greedy ones, not after them',
  );
  reads[2]!.answer.resolve(empty);
  assert.equal((await otherPage).ok, true);
  // The greedy principal's pages go on, two at a time, and all complete.
  for (let n = 0; n < 20; n++) {
    while (reads.filter((r) => r.taskId.startsWith('greedy')).length <= n) await turn();
    assert.ok(reads.filter((r) => r.taskId.startsWith('greedy')).length <= n + 2, 'never more than two at once');
    reads.filter((r) => r.taskId.startsWith('greedy'))[n]!.answer.resolve(empty);
  }
  assert.equal((await Promise.all(greedyPages)).length, 20);
});
