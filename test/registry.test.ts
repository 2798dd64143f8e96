/**
 * Unit test of the subscription index alone, with stand-in subscribers that record frames.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { SubscriptionIndex, type Subscriber } from '../src/core/subscription-index.js';
import type { Principal } from '../src/options.js';

function subscriber(principal: Principal): Subscriber & { got: string[] } {
  const got: string[] = [];
  return {
    principal,
    updates: undefined,
    outputs: undefined,
    all: false,
    round: 0,
    got,
    sendUpdate: (_taskId: string, frame: Buffer) => got.push(frame.toString()),
    sendOutput: (_taskId: string, frame: Buffer) => got.push(frame.toString()),
  };
}

const A = 'aaaaaaaa-0000-0000-0000-000000000000';
const B = 'bbbbbbbb-0000-0000-0000-000000000000';
const T1 = '11111111-0000-0000-0000-000000000000';

test('one frame per subscriber per event, whatever the overlap of its subscriptions', () => {
  const index = new SubscriptionIndex();
  const admin = subscriber({ ownerId: A, admin: true });
  const owner = subscriber({ ownerId: A, admin: false });
  index.subscribeAll(admin);
  index.subscribeUpdates(admin, T1);
  index.subscribeAll(owner);
  index.subscribeUpdates(owner, T1);
  assert.equal(index.deliverUpdate(T1, A, Buffer.from('e1'), 'c'), 2);
  assert.equal(index.deliverUpdate(T1, A, Buffer.from('e2'), 'c'), 2);
  assert.deepEqual(admin.got, ['e1', 'e2']);
  assert.deepEqual(owner.got, ['e1', 'e2']);
});

test('visibility: other owners and ownerless tasks are withheld from owners', () => {
  const index = new SubscriptionIndex();
  const a = subscriber({ ownerId: A, admin: false });
  const b = subscriber({ ownerId: B, admin: false });
  index.subscribeAll(a);
  index.subscribeAll(b);
  index.subscribeUpdates(a, T1);
  index.subscribeOutput(a, T1);
  index.deliverUpdate(T1, B, Buffer.from('bob'), 'c');
  index.deliverUpdate(T1, null, Buffer.from('nobody'), 'c');
  index.deliverOutput(T1, B, Buffer.from('bob-out'), 'c');
  index.deliverOutput(T1, A, Buffer.from('alice-out'), 'c');
  assert.deepEqual(a.got, ['alice-out']);
  assert.deepEqual(b.got, ['bob']);
});

test('remove frees every entry the subscriber held', () => {
  const index = new SubscriptionIndex();
  const a = subscriber({ ownerId: A, admin: false });
  const root = subscriber({ ownerId: null, admin: true });
  for (const s of [a, root]) {
    index.subscribeAll(s);
    index.subscribeUpdates(s, T1);
    index.subscribeOutput(s, T1);
  }
  index.remove(a);
  index.remove(root);
  assert.deepEqual(index.stats(), { tasks: 0, outputs: 0, ownersAll: 0, adminsAll: 0 });
  assert.equal(a.updates, undefined);
  assert.equal(a.outputs, undefined);
  assert.equal(a.all, false);
});

test('a task followed by one, then several, then one again: each event reaches exactly its followers', () => {
  const index = new SubscriptionIndex();
  const [a, b, c] = [A, A, A].map((ownerId) => subscriber({ ownerId, admin: false }));
  const deliver = (label: string) =>
    index.deliverUpdate(T1, A, Buffer.from(label), 'c') + index.deliverOutput(T1, A, Buffer.from(`${label}-out`), 'c');
  for (const s of [a!, a!, b!, c!]) {
    index.subscribeUpdates(s, T1);
    index.subscribeOutput(s, T1);
  }
  assert.equal(deliver('three'), 6);
  index.unsubscribeUpdates(b!, T1);
  index.unsubscribeOutput(b!, T1);
  assert.equal(deliver('two'), 4);
  index.remove(a!);
  assert.equal(deliver('one'), 2);
  index.unsubscribeUpdates(b!, T1); // not subscribed any more: changes nothing
  assert.equal(deliver('still one'), 2);
  index.remove(c!);
  assert.equal(deliver('none'), 0);
  assert.deepEqual(index.stats(), { tasks: 0, outputs: 0, ownersAll: 0, adminsAll: 0 });
  assert.deepEqual(a!.got, ['three', 'three-out', 'two', 'two-out']);
  assert.deepEqual(b!.got, ['three', 'three-out']);
  assert.deepEqual(c!.got, ['three', 'three-out', 'two', 'two-out', 'one', 'one-out', 'still one', 'still one-out']);
});

test('reaches is never false where a delivery would reach a subscriber (it lets an event go unframed)', () => {
  const owners = [A, B, null] as const;
  fc.assert(
    fc.property(
      fc.array(
        fc.record({
          owner: fc.constantFrom(...owners),
          admin: fc.boolean(),
          updates: fc.boolean(),
          outputs: fc.boolean(),
          all: fc.boolean(),
        }),
        { maxLength: 4 },
      ),
      fc.constantFrom(...owners),
      fc.constantFrom('update' as const, 'output' as const),
      (subscribers, eventOwner, kind) => {
        const index = new SubscriptionIndex();
        for (const s of subscribers) {
          const sub = subscriber({ ownerId: s.owner, admin: s.admin });
          if (s.updates) index.subscribeUpdates(sub, T1);
          if (s.outputs) index.subscribeOutput(sub, T1);
          if (s.all) index.subscribeAll(sub);
        }
        const reaches = index.reaches(kind, T1, eventOwner);
        const reached =
          kind === 'update'
            ? index.deliverUpdate(T1, eventOwner, Buffer.from('e'), 'c')
            : index.deliverOutput(T1, eventOwner, Buffer.from('e'), 'c');
        if (reached > 0) assert.ok(reaches, `reached ${reached} subscribers, yet reaches said no`);
        // Nobody at all is subscribed: nothing to frame.
        if (subscribers.every((s) => !s.updates && !s.outputs && !(s.all && (s.admin || s.owner !== null)))) assert.equal(reaches, false);
      },
    ),
    { numRuns: 500 },
  );
});
