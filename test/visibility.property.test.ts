/**
 * Property: over subscriber kind × notification owner × subscription kind × event kind, a frame
 * is delivered exactly when the visibility rules allow it. Real server, real sockets.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import fc from 'fast-check';
import { deliveries } from './helpers/delivered.js';
import { startTestServer, type TestServer } from './helpers/server.js';

type Subscriber = 'admin' | 'owner' | 'otherOwner';
type NotificationOwner = 'same' | 'other' | 'null' | 'omitted';
type Subscription = 'subscribe' | 'subscribeOutput' | 'subscribeAll';
type EventKind = 'update' | 'output';

let server: TestServer;
let owner: { ownerId: string; key: string };
let other: { ownerId: string; key: string };
let admin: { key: string };

before(async () => {
  server = await startTestServer();
  owner = await server.owner();
  other = await server.owner();
  admin = await server.admin();
});
after(() => server.close());

/** The rules of PROTOCOL.md, written independently of the implementation. */
function expected(who: Subscriber, notified: NotificationOwner, sub: Subscription, kind: EventKind): boolean {
  // The task belongs to `owner` in the database; the notification may say otherwise.
  const eventOwner = notified === 'same' || notified === 'omitted' ? 'owner' : notified === 'other' ? 'otherOwner' : null;
  const sees = who === 'admin' || who === eventOwner;
  if (sub === 'subscribeAll') return kind === 'update' && sees;
  const subscribed = who === 'admin' || who === 'owner';
  const matches = (sub === 'subscribe') === (kind === 'update');
  return subscribed && matches && sees;
}

test('a frame is delivered exactly when the rules allow it', async () => {
  const handed = deliveries(server.app);
  const keys = { admin: admin.key, owner: owner.key, otherOwner: other.key };
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom<Subscriber>('admin', 'owner', 'otherOwner'),
      fc.constantFrom<NotificationOwner>('same', 'other', 'null', 'omitted'),
      fc.constantFrom<Subscription>('subscribe', 'subscribeOutput', 'subscribeAll'),
      fc.constantFrom<EventKind>('update', 'output'),
      async (who, notified, sub, kind) => {
        const taskId = await server.task(owner.ownerId);
        const client = await server.connect(keys[who]);
        const ack = await client.request(sub === 'subscribeAll' ? { type: sub } : { type: sub, taskId });
        const ownerField =
          notified === 'same'
            ? { ownerId: owner.ownerId }
            : notified === 'other'
              ? { ownerId: other.ownerId }
              : notified === 'null'
                ? { ownerId: null }
                : {};
        const cursor =
          kind === 'update'
            ? await server.app.mesh.taskUpdates.publish({
                taskId,
                ...ownerField,
                version: 1,
                status: 's',
                updatedFields: [],
                updatedBy: 'p',
              })
            : await server.app.mesh.taskOutput.publish({ taskId, ...ownerField, messageType: 'raw', content: 'c', isPartial: false });
        // publish() resolves once the event is logged; wait until it has been handed to the sockets.
        await handed(cursor);
        // The closing marker: a frame this client certainly gets, after anything the event caused.
        const marker = await client.request({ type: 'unsubscribeAll' });
        const delivered = marker.type !== 'unsubscribedAll';
        if (delivered) assert.equal(marker.taskId, taskId);
        assert.equal(delivered, expected(who, notified, sub, kind), JSON.stringify({ who, notified, sub, kind, ack }));
        await client.close();
      },
    ),
    { numRuns: 150 },
  );
});
