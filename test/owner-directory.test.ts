/**
 * Unit tests of the owner directory (src/core/owners.ts) with a resolver the test answers: one
 * query at a time while it answers within `slowQueryMs`, and none sooner than `queryGapMs` after
 * one that asked for several, the lookups asked meanwhile going together in the next, whatever turn they came in; a slow query no longer holds the next back;
 * a failed or hung one fails only its own lookups. The storm it exists for is measured by the
 * bench (W2's reconnect storm), on a real database.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { deferred, turn, type Deferred } from './helpers/async.js';
import { NO_SUCH_TASK, OwnerDirectory } from '../src/core/owners.js';
import { OwnerLookupUnavailableError } from '../src/errors.js';

/** A resolver whose every call waits for the test to answer it. */
function answeredByHand() {
  const calls: { ids: readonly string[]; answer: Deferred<Map<string, string | null>> }[] = [];
  const resolver = (ids: readonly string[]) => {
    const answer = deferred<Map<string, string | null>>();
    calls.push({ ids: [...ids], answer });
    return answer.promise;
  };
  /** The ids of each query so far, in order. */
  const asked = () => calls.map((call) => call.ids);
  return { calls, resolver, asked };
}

describe('OwnerDirectory', () => {
  test('lookups asked while one is being answered, over several turns, go together in the next query', async () => {
    const { calls, resolver, asked } = answeredByHand();
    const owners = new OwnerDirectory(resolver, 60_000, 60_000, 0);
    const a = owners.lookup('a');
    await turn();
    assert.deepEqual(asked(), [['a']]);
    const b = owners.lookup('b');
    await turn();
    const c = owners.lookup('c');
    const b2 = owners.lookup('b');
    await turn();
    assert.equal(calls.length, 1, 'no second query while the first is unanswered');
    calls[0]!.answer.resolve(new Map([['a', 'owner-a']]));
    assert.equal(await a, 'owner-a');
    await turn();
    assert.deepEqual(asked(), [['a'], ['b', 'c']]);
    calls[1]!.answer.resolve(new Map([['b', null]]));
    assert.equal(await b, null);
    assert.equal(await b2, null);
    assert.equal(await c, NO_SUCH_TASK);
  });

  test('after a query of several, lookups wait out queryGapMs and go together; after a query of one, at once', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const { calls, resolver, asked } = answeredByHand();
    const owners = new OwnerDirectory(resolver, 60_000, 60_000, 30_000);
    // One at a time: each goes at once.
    const a = owners.lookup('a');
    await turn();
    calls[0]!.answer.resolve(new Map([['a', 'owner-a']]));
    assert.equal(await a, 'owner-a');
    const b = owners.lookup('b');
    await turn();
    assert.deepEqual(asked(), [['a'], ['b']], 'the last query asked for one task: no wait');
    // Several in one turn: the next query waits out the gap, and gathers what comes meanwhile.
    const several = [owners.lookup('c'), owners.lookup('d')];
    calls[1]!.answer.resolve(new Map([['b', 'owner-b']]));
    assert.equal(await b, 'owner-b');
    await turn();
    assert.deepEqual(asked(), [['a'], ['b'], ['c', 'd']]);
    calls[2]!.answer.resolve(new Map([['c', 'owner-c']]));
    assert.deepEqual(await Promise.all(several), ['owner-c', NO_SUCH_TASK]);
    const later = [owners.lookup('e')];
    await turn();
    later.push(owners.lookup('f'));
    await turn();
    assert.deepEqual(asked().length, 3, 'answered, but a query of several went less than queryGapMs ago: the next waits');
    t.mock.timers.tick(30_000);
    await turn();
    assert.deepEqual(asked().at(-1), ['e', 'f']);
    calls[3]!.answer.resolve(new Map([['f', 'owner-f']]));
    assert.deepEqual(await Promise.all(later), [NO_SUCH_TASK, 'owner-f']);
  });

  test('a failed query fails only its own lookups; the next batch is asked', async () => {
    const { calls, resolver, asked } = answeredByHand();
    const owners = new OwnerDirectory(resolver, 60_000, 60_000, 0);
    const a = owners.lookup('a');
    await turn();
    const b = owners.lookup('b');
    calls[0]!.answer.reject(new Error('connection reset'));
    await assert.rejects(a, OwnerLookupUnavailableError);
    await turn();
    assert.deepEqual(asked(), [['a'], ['b']]);
    calls[1]!.answer.resolve(new Map([['b', 'owner-b']]));
    assert.equal(await b, 'owner-b');
  });

  test('a query unanswered for slowQueryMs no longer holds the next one back', async () => {
    const { calls, resolver, asked } = answeredByHand();
    const owners = new OwnerDirectory(resolver, 60_000, 0);
    const a = owners.lookup('a');
    await turn();
    const b = owners.lookup('b');
    await turn();
    assert.deepEqual(asked(), [['a'], ['b']]);
    calls[1]!.answer.resolve(new Map([['b', 'owner-b']]));
    assert.equal(await b, 'owner-b');
    calls[0]!.answer.resolve(new Map([['a', 'owner-a']]));
    assert.equal(await a, 'owner-a');
  });

  test('a resolver that throws at once fails its own lookups, and the next batch is asked', async () => {
    let call = 0;
    const owners = new OwnerDirectory(
      (ids) => {
        if (++call === 1) throw new Error('the resolver broke');
        return Promise.resolve(new Map(ids.map((id) => [id, `owner-${id}`])));
      },
      60_000,
      60_000,
    );
    await assert.rejects(owners.lookup('a'), OwnerLookupUnavailableError);
    assert.equal(await owners.lookup('b'), 'owner-b');
  });

  test('lookups waiting behind one that never answers answer UNAVAILABLE too', { timeout: 10_000 }, async () => {
    const { resolver } = answeredByHand();
    const owners = new OwnerDirectory(resolver, 20, 60_000);
    const first = owners.lookup('a');
    await turn();
    const waiting = [owners.lookup('b'), owners.lookup('c')];
    await assert.rejects(first, OwnerLookupUnavailableError);
    for (const lookup of waiting) await assert.rejects(lookup, OwnerLookupUnavailableError);
  });
});
