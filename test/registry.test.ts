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
    batch: 0,
    taken: 0,
    got,
    sendUpdate: (_taskId: string, frame: Buffer) => got.push(frame.toString()),
    sendUpdates: (share, from, to) => got.push(...share.frames.slice(from, to).map(String)),
    sendOutput: (_taskId: string, frame: Buffer) => got.push(frame.toString()),
  };
}

const A = 'aaaaaaaa-0000-0000-0000-000000000000';
const B = 'bbbbbbbb-0000-0000-0000-000000000000';
const T1 = '11111111-0000-0000-0000-000000000000';

/** A random subscriber: its principal, what it follows (`follows` draws it), and whether it holds `subscribeAll`. */
const subscriberSpec = <T>(follows: fc.Arbitrary<T>) =>
  fc.record({ owner: fc.constantFrom(A, B, null), admin: fc.boolean(), updates: follows, outputs: follows, all: fc.boolean() });

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
      fc.array(subscriberSpec(fc.boolean()), { maxLength: 4 }),
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

test('a delivery batch gives each subscriber exactly what, and in the order, one delivery at a time gives it', () => {
  const owners = [A, B, null] as const;
  const tasks = [T1, B, A] as const;
  const step = fc.oneof(
    fc.record({ op: fc.constant('update' as const), task: fc.constantFrom(...tasks), owner: fc.constantFrom(...owners) }),
    fc.record({ op: fc.constant('output' as const), task: fc.constantFrom(...tasks), owner: fc.constantFrom(...owners) }),
    // Leaving and joining `subscribeAll` mid-batch (a principal change, a socket closing).
    fc.record({ op: fc.constantFrom('leaveAll' as const, 'joinAll' as const, 'remove' as const), who: fc.nat(3) }),
  );
  fc.assert(
    fc.property(
      fc.array(subscriberSpec(fc.subarray([...tasks])), { minLength: 1, maxLength: 4 }),
      fc.array(fc.array(step, { maxLength: 8 }), { maxLength: 4 }),
      (subscribers, batches) => {
        const run = (batched: boolean): string[][] => {
          const index = new SubscriptionIndex();
          const subs = subscribers.map((s) => {
            const sub = subscriber({ ownerId: s.owner, admin: s.admin });
            for (const t of s.updates) index.subscribeUpdates(sub, t);
            for (const t of s.outputs) index.subscribeOutput(sub, t);
            if (s.all) index.subscribeAll(sub);
            return sub;
          });
          let n = 0;
          for (const steps of batches) {
            const deliver = () => {
              for (const s of steps) {
                const sub = 'who' in s ? subs[s.who % subs.length]! : undefined;
                if (s.op === 'update') index.deliverUpdate(s.task, s.owner, Buffer.from(`u${n++}`), 'c');
                else if (s.op === 'output') index.deliverOutput(s.task, s.owner, Buffer.from(`o${n++}`), 'c');
                else if (s.op === 'leaveAll') index.unsubscribeAll(sub!);
                else if (s.op === 'joinAll') index.subscribeAll(sub!);
                else index.remove(sub!);
              }
            };
            if (batched) index.batch(deliver);
            else deliver();
          }
          return subs.map((s) => s.got);
        };
        assert.deepEqual(run(true), run(false));
      },
    ),
    { numRuns: 2000 },
  );
});

test('a batch hands every member its share even when one member throws, then throws', () => {
  const index = new SubscriptionIndex();
  const a = subscriber({ ownerId: null, admin: true });
  const broken = subscriber({ ownerId: null, admin: true });
  const b = subscriber({ ownerId: null, admin: true });
  broken.sendUpdates = () => {
    throw new Error('broken socket');
  };
  for (const s of [a, broken, b]) index.subscribeAll(s);
  assert.throws(() => index.batch(() => index.deliverUpdate(T1, A, Buffer.from('e1'), 'c')), /broken socket/);
  assert.deepEqual(a.got, ['e1']);
  assert.deepEqual(b.got, ['e1']);
  index.remove(broken);
  index.batch(() => index.deliverUpdate(T1, A, Buffer.from('e2'), 'c'));
  assert.deepEqual(a.got, ['e1', 'e2']);
  assert.deepEqual(b.got, ['e1', 'e2']);
});

/** A batch that delivers `e1` to its `subscribeAll` sets, then throws. */
function failPartWay(index: SubscriptionIndex): void {
  assert.throws(() =>
    index.batch(() => {
      index.deliverUpdate(T1, A, Buffer.from('e1'), 'c1');
      throw new Error('a delivery failed part-way');
    }),
  );
}

test('a batch whose deliveries throw leaves no share behind for later deliveries', () => {
  const index = new SubscriptionIndex();
  const admin = subscriber({ ownerId: null, admin: true });
  index.subscribeAll(admin);
  failPartWay(index);
  // One at a time afterwards: e2 is delivered, then e3 in a batch of its own.
  index.deliverUpdate(T1, A, Buffer.from('e2'), 'c2');
  index.batch(() => index.deliverUpdate(T1, A, Buffer.from('e3'), 'c3'));
  // Without batching: ['e1', 'e2', 'e3'].
  assert.deepEqual(admin.got, ['e1', 'e2', 'e3']);
});

test('a socket that joins subscribeAll after a failed batch does not get what its set took before it joined', () => {
  const index = new SubscriptionIndex();
  const early = subscriber({ ownerId: A, admin: false });
  index.subscribeAll(early);
  failPartWay(index);
  const late = subscriber({ ownerId: A, admin: false });
  index.subscribeAll(late);
  index.batch(() => index.deliverUpdate(T1, A, Buffer.from('e2'), 'c2'));
  assert.deepEqual(late.got, ['e2']);
});

test("in a batch, a member that fails on its share before an output costs the output's other followers nothing", () => {
  const index = new SubscriptionIndex();
  const broken = subscriber({ ownerId: null, admin: true });
  const follower = subscriber({ ownerId: null, admin: true });
  broken.sendUpdates = () => {
    throw new Error('broken socket');
  };
  index.subscribeAll(broken);
  index.subscribeOutput(broken, T1);
  index.subscribeOutput(follower, T1);
  assert.throws(
    () =>
      index.batch(() => {
        index.deliverUpdate(T1, A, Buffer.from('e1'), 'c1');
        assert.equal(index.deliverOutput(T1, A, Buffer.from('o1'), 'c2'), 2);
      }),
    /broken socket/,
  );
  assert.deepEqual(broken.got, ['o1']);
  assert.deepEqual(follower.got, ['o1']);
});
