/**
 * A new subscription with `since` (what a reconnecting client sends) has one owner check: the one
 * its first page makes once read. Until that check grants it, nothing of the stream goes out, not
 * even its ack. These tests attack that as a tenant would: another's task with every kind of
 * `since` (whose replay would say how far behind it is), on either bus; owner lookups that fail;
 * live events that arrive while the check waits (and that the socket's `subscribeAll` carries
 * anyway); a re-authentication, a close, an unsubscribe or the same subscribe again meanwhile; and
 * the subscription slots a refused subscribe must not keep.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, test } from 'node:test';
import Fastify, { type FastifyInstance } from 'fastify';
import meshSubscriptions, { type MeshSubscriptionsOptions, type OwnerResolver } from '../src/index.js';
import { sqlOwnerResolver } from '../src/bus/postgres/task-owners.js';
import { DEFAULTS } from '../src/options.js';
import { deferred } from './helpers/async.js';
import { createTestDatabase } from './helpers/database.js';
import { startTestServer } from './helpers/server.js';
import { TestClient, type Frame } from './helpers/ws-client.js';

const hosts: FastifyInstance[] = [];
after(() => Promise.all(hosts.map((app) => app.close())));

interface Host {
  app: FastifyInstance;
  /** Task → owner, as the host's tasks table has it. */
  tasks: Map<string, string | null>;
  /** Owner lookups fail while set. */
  trouble: { owners: boolean };
  /** Owner lookups, held at will (`hold`). */
  gate: Gate;
  /** Re-authentication: an owner id here is answered with the one it maps to. */
  moved: Map<string, string>;
  /** Called each time re-authentication answers a changed principal. */
  reauthed: { done?: () => void };
  connect(ownerId: string): Promise<TestClient>;
}

/** While `held` is set, owner lookups wait for it, and call `asked` first. `looked`: every task id asked. */
interface Gate {
  held?: Promise<void>;
  asked?: () => void;
  looked?: string[];
}

/** `resolve`, made to wait while `gate` is held. */
const gated =
  (gate: Gate, resolve: OwnerResolver): OwnerResolver =>
  async (ids) => {
    (gate.looked ??= []).push(...ids);
    if (gate.held) {
      gate.asked?.();
      await gate.held;
    }
    return resolve(ids);
  };

/** Holds the owner lookups of `gate` until released; `asked` resolves once one waits. */
function hold(gate: Gate): { asked: Promise<void>; release(): void } {
  const asked = deferred();
  const held = deferred();
  gate.held = held.promise;
  gate.asked = () => asked.resolve();
  return {
    asked: asked.promise,
    release: () => {
      gate.held = undefined;
      held.resolve();
    },
  };
}

/** A host with the memory bus whose tasks table is a Map; a socket's token is its owner id. */
async function host(options: Partial<MeshSubscriptionsOptions> = {}): Promise<Host> {
  const tasks = new Map<string, string | null>();
  const trouble = { owners: false };
  const gate: Gate = {};
  const moved = new Map<string, string>();
  const reauthed: Host['reauthed'] = {};
  const app = Fastify();
  hosts.push(app);
  await app.register(meshSubscriptions, {
    bus: 'memory',
    authenticate: async (request) => {
      const token = request.headers['x-owner'];
      return typeof token === 'string' ? { ownerId: token, admin: false } : null;
    },
    reauthenticate: async (principal) => {
      const to = principal.ownerId === null ? undefined : moved.get(principal.ownerId);
      if (to === undefined) return principal;
      setImmediate(() => reauthed.done?.());
      return { ownerId: to, admin: false };
    },
    resolveOwners: gated(gate, async (ids) => {
      if (trouble.owners) throw new Error('the tasks table is out of reach');
      return new Map(ids.filter((id) => tasks.has(id)).map((id) => [id, tasks.get(id)!]));
    }),
    // Small, so that an old `since` is too far behind, and leaked slots show at once.
    replay: { maxEvents: 2 },
    limits: { maxSubscriptionsPerConnection: 2 },
    ...options,
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const url = `ws://127.0.0.1:${(app.server.address() as { port: number }).port}/api/v1/mesh/tasks/subscribe`;
  return { app, tasks, trouble, gate, moved, reauthed, connect: (ownerId) => TestClient.connect(url, { 'x-owner': ownerId }) };
}

const update = (taskId: string, ownerId: string, version: number) => ({
  taskId,
  ownerId,
  version,
  status: 'running',
  updatedFields: ['status'],
  updatedBy: 't',
});
const output = (taskId: string, ownerId: string, content: string) => ({
  taskId,
  ownerId,
  messageType: 'assistant',
  content,
  isPartial: false,
});
const notFound = (taskId: string) => ({ type: 'error', code: 'NOT_FOUND', message: `task ${taskId} not found` });

test("another tenant's task, resumed from any since, answers NOT_FOUND as a missing task does, and holds nothing", async () => {
  const { app, tasks, connect } = await host();
  const victim = randomUUID();
  const mallory = randomUUID();
  const theirs = randomUUID();
  const mine = randomUUID();
  const mineToo = randomUUID();
  const missing = randomUUID();
  tasks.set(theirs, victim).set(mine, mallory).set(mineToo, mallory);
  const cursors: string[] = [];
  for (let version = 1; version <= 5; version++) cursors.push(await app.mesh.taskUpdates.publish(update(theirs, victim, version)));
  cursors.push(await app.mesh.taskOutput.publish(output(theirs, victim, 'secret')));

  const client = await connect(mallory);
  assert.equal((await client.request({ type: 'subscribe', taskId: mine })).type, 'subscribed');
  // Each `since` would get a different answer on the owner's own socket: replayed events,
  // `tooFarBehind` (more than maxEvents after it), `unknownCursor`, or the whole history.
  const sinces = [cursors[3]!, cursors[0]!, `${cursors[0]!.split('.')[0]}.999999`, 'not-a-cursor', 'start'];
  for (const since of sinces) {
    for (const type of ['subscribe', 'subscribeOutput']) {
      assert.deepEqual(await client.request({ type, taskId: theirs, since }), notFound(theirs), `${type} since ${since}`);
      assert.deepEqual(await client.request({ type, taskId: missing, since }), notFound(missing), `${type} since ${since}, missing task`);
    }
  }
  // Twenty refused subscribes kept no slot: the second of two is free.
  assert.deepEqual(await client.request({ type: 'subscribe', taskId: mineToo }), { type: 'subscribed', taskId: mineToo });
  // And none of them follows the task: its next events reach no socket of mallory's.
  await app.mesh.taskUpdates.publish(update(theirs, victim, 6));
  await app.mesh.taskOutput.publish(output(theirs, victim, 'more secret'));
  await app.mesh.taskUpdates.publish(update(mine, mallory, 1));
  assert.deepEqual((await client.next()).taskId, mine, 'the first frame after the refusals is of her own task');
  assert.deepEqual(client.pending, []);
  await client.close();
});

test('owner lookups that fail: UNAVAILABLE with nothing of the task and no subscription held; granted once they work', async () => {
  const { app, tasks, trouble, connect } = await host();
  const ownerId = randomUUID();
  const taskId = randomUUID();
  const other = randomUUID();
  tasks.set(taskId, ownerId).set(other, ownerId);
  const first = await app.mesh.taskUpdates.publish(update(taskId, ownerId, 1));
  await app.mesh.taskUpdates.publish(update(taskId, ownerId, 2));
  const client = await connect(ownerId);
  assert.equal((await client.request({ type: 'subscribe', taskId: other })).type, 'subscribed');

  trouble.owners = true;
  for (const type of ['subscribe', 'subscribeOutput']) {
    const refused = await client.request({ type, taskId, since: first });
    assert.deepEqual([refused.type, refused.code], ['error', 'UNAVAILABLE'], type);
  }
  trouble.owners = false;
  // Not followed: the task's update, published first, does not reach the socket.
  await app.mesh.taskUpdates.publish(update(taskId, ownerId, 3));
  await app.mesh.taskUpdates.publish(update(other, ownerId, 1));
  assert.equal((await client.next()).taskId, other);
  // Asked again, it is granted: the ack, then what it missed, in order.
  assert.deepEqual(await client.request({ type: 'subscribe', taskId, since: first }), { type: 'subscribed', taskId });
  const replayed = await client.until((f) => f.version === 3);
  assert.deepEqual(
    replayed.map((f) => [f.taskId, f.version]),
    [
      [taskId, 2],
      [taskId, 3],
    ],
  );
  await client.close();
});

test('live events that come while the check waits go out after the ack, in order, once each', async () => {
  // Room to replay them all: whether they come live or from the log, the client gets the same frames.
  const h = await host({ replay: { maxEvents: 100 } });
  const ownerId = randomUUID();
  const taskId = randomUUID();
  h.tasks.set(taskId, ownerId);
  const since = await h.app.mesh.taskUpdates.publish(update(taskId, ownerId, 1));
  await h.app.mesh.taskUpdates.publish(update(taskId, ownerId, 2));
  const client = await h.connect(ownerId);
  const lookup = hold(h.gate);
  client.send({ type: 'subscribe', taskId, since });
  await lookup.asked;
  // Published while the subscribe's only owner check waits (their owner named: no lookup of their own).
  await h.app.mesh.taskUpdates.publish(update(taskId, ownerId, 3));
  await h.app.mesh.taskUpdates.publish(update(taskId, ownerId, 4));
  lookup.release();
  const frames = await client.until((f) => f.version === 4);
  assert.deepEqual(
    frames.map((f) => [f.type, f.version ?? null]),
    [
      ['subscribed', null],
      ['taskUpdated', 2],
      ['taskUpdated', 3],
      ['taskUpdated', 4],
    ],
  );
  assert.deepEqual(
    h.gate.looked?.filter((id) => id === taskId),
    [taskId],
    'one owner lookup for the resumed subscribe, after its page is read',
  );
  await client.close();
});

test('refused after live events came for the new subscription (logged as hers): she gets only NOT_FOUND', async () => {
  const h = await host();
  const mallory = randomUUID();
  const victim = randomUUID();
  const taskId = randomUUID();
  const mine = randomUUID();
  h.tasks.set(taskId, victim).set(mine, mallory);
  const since = await h.app.mesh.taskUpdates.publish(update(taskId, victim, 1));
  const client = await h.connect(mallory);
  assert.equal((await client.request({ type: 'subscribe', taskId: mine })).type, 'subscribed');
  const lookup = hold(h.gate);
  client.send({ type: 'subscribeOutput', taskId, since });
  await lookup.asked;
  // Events a worker logs naming her as the owner, while the task's owner says otherwise: a
  // live follower of hers would pass their own check; a subscription not yet granted must not.
  await h.app.mesh.taskOutput.publish(output(taskId, mallory, 'not hers to see'));
  await h.app.mesh.taskUpdates.publish(update(taskId, mallory, 2));
  lookup.release();
  assert.deepEqual(await client.next(), notFound(taskId));
  await h.app.mesh.taskUpdates.publish(update(mine, mallory, 1));
  const next: Frame = await client.next();
  assert.deepEqual([next.type, next.taskId], ['taskUpdated', mine]);
  await client.close();
});

const shape = (frames: Frame[]) => frames.map((f) => [f.type, (f.taskId as string | undefined) ?? null, f.version ?? f.code ?? null]);

for (const refusal of ['UNAVAILABLE', 'NOT_FOUND'] as const) {
  test(`a subscribeAll loses nothing when a since-subscribe of one of its tasks is refused (${refusal})`, async () => {
    const h = await host();
    const mallory = randomUUID();
    const victim = randomUUID();
    const taskId = randomUUID();
    const other = randomUUID();
    h.tasks.set(taskId, mallory).set(other, mallory);
    const since = await h.app.mesh.taskUpdates.publish(update(taskId, mallory, 1));
    const client = await h.connect(mallory);
    assert.deepEqual(await client.request({ type: 'subscribeAll' }), { type: 'subscribedAll' });
    const lookup = hold(h.gate);
    client.send({ type: 'subscribe', taskId, since });
    await lookup.asked;
    // Hers, logged as hers: her subscribeAll carries it, whatever becomes of the subscribe.
    await h.app.mesh.taskUpdates.publish(update(taskId, mallory, 2));
    // Refused: the owner lookup fails, or the task moved to another owner after the event.
    if (refusal === 'UNAVAILABLE') h.trouble.owners = true;
    else h.tasks.set(taskId, victim);
    lookup.release();
    const frames = await client.until((f) => f.type === 'error');
    h.trouble.owners = false;
    await h.app.mesh.taskUpdates.publish(update(other, mallory, 1));
    frames.push(...(await client.until((f) => f.taskId === other)));
    assert.deepEqual(shape(frames.filter((f) => f.type === 'error')), [['error', null, refusal]]);
    assert.deepEqual(
      shape(frames.filter((f) => f.type !== 'error')),
      [
        ['taskUpdated', taskId, 2],
        ['taskUpdated', other, 1],
      ],
      'the update her subscribeAll carries reaches her',
    );
    await client.close();
  });
}

test('a re-authentication that takes the task away while the check waits: nothing of it reaches the new principal', async () => {
  const h = await host({ reauth: { intervalMs: 30 } });
  const alice = randomUUID();
  const bob = randomUUID();
  const taskId = randomUUID();
  const bobs = randomUUID();
  h.tasks.set(taskId, alice).set(bobs, bob);
  const since = await h.app.mesh.taskUpdates.publish(update(taskId, alice, 1));
  await h.app.mesh.taskUpdates.publish(update(taskId, alice, 2));
  const client = await h.connect(alice);
  const lookup = hold(h.gate);
  client.send({ type: 'subscribe', taskId, since });
  await lookup.asked;
  // The socket's credentials now say bob (alice's grant revoked): it may no longer see alice's task.
  const reauthed = deferred();
  h.reauthed.done = () => reauthed.resolve();
  h.moved.set(alice, bob);
  await reauthed.promise;
  lookup.release();
  assert.deepEqual(await client.next(), notFound(taskId));
  // Whatever else comes, nothing of alice's task: publish one of bob's and read up to it.
  assert.deepEqual(await client.request({ type: 'subscribe', taskId: bobs }), { type: 'subscribed', taskId: bobs });
  await h.app.mesh.taskUpdates.publish(update(bobs, bob, 1));
  const frames = await client.until((f) => f.type === 'taskUpdated' && f.taskId === bobs);
  assert.deepEqual(
    frames.filter((f) => f.type === 'taskUpdated' && f.taskId === taskId),
    [],
    'no update of the task bob may not see',
  );
  await client.close();
});

test('closing, unsubscribing or subscribing twice while the check waits keeps no slot and no index entry, and leaks nothing', async () => {
  const h = await host();
  const mallory = randomUUID();
  const victim = randomUUID();
  const theirs = randomUUID();
  const mine = randomUUID();
  const mineToo = randomUUID();
  h.tasks.set(theirs, victim).set(mine, mallory).set(mineToo, mallory);
  const since = await h.app.mesh.taskUpdates.publish(update(theirs, victim, 1));
  await h.app.mesh.taskUpdates.publish(update(theirs, victim, 2));
  // Closed while the check waits.
  const first = await h.connect(mallory);
  let lookup = hold(h.gate);
  first.send({ type: 'subscribe', taskId: theirs, since });
  await lookup.asked;
  await first.close();
  lookup.release();
  // The same since-subscribe twice, an unsubscribe, and subscribeAll with and without since, all while waiting.
  const client = await h.connect(mallory);
  lookup = hold(h.gate);
  client.send({ type: 'subscribe', taskId: theirs, since });
  await lookup.asked;
  client.send({ type: 'subscribe', taskId: theirs, since });
  client.send({ type: 'subscribeOutput', taskId: theirs, since: 'start' });
  client.send({ type: 'unsubscribe', taskId: theirs });
  client.send({ type: 'subscribe', taskId: theirs, since: 'start' });
  client.send({ type: 'subscribeAll', since });
  await h.app.mesh.taskUpdates.publish(update(theirs, victim, 3));
  await h.app.mesh.taskUpdates.publish(update(theirs, mallory, 4));
  lookup.release();
  const frames = await client.until((f) => f.type === 'subscribedAll');
  assert.deepEqual(shape(frames), [
    ['error', null, 'NOT_FOUND'],
    ['error', null, 'NOT_FOUND'],
    ['error', null, 'NOT_FOUND'],
    ['unsubscribed', theirs, null],
    ['error', null, 'NOT_FOUND'],
    ['subscribedAll', null, null],
  ]);
  // subscribeAll (since) carries the update logged as hers (by design: by the owner it was logged with); nothing else.
  assert.deepEqual(h.app.mesh.stats().tasks, 0);
  assert.deepEqual(h.app.mesh.stats().outputs, 0);
  client.send({ type: 'subscribe', taskId: mine });
  const rest = await client.until((f) => f.type === 'subscribed');
  await h.app.mesh.taskUpdates.publish(update(mine, mallory, 1));
  rest.push(...(await client.until((f) => f.taskId === mine && f.type === 'taskUpdated')));
  assert.deepEqual(
    rest.filter((f) => f.taskId === theirs && f.version !== 4),
    [],
    'nothing of the task but what subscribeAll carries by its logged owner',
  );
  await client.close();
});

test('granted with live events flowing over several pages: the ack first, then every event once, in order', async () => {
  const h = await host({ replay: { maxEvents: 1000 }, backpressure: { soft: 300 } });
  const ownerId = randomUUID();
  const taskId = randomUUID();
  h.tasks.set(taskId, ownerId);
  const since = await h.app.mesh.taskUpdates.publish(update(taskId, ownerId, 1));
  for (let v = 2; v <= 30; v++) await h.app.mesh.taskUpdates.publish(update(taskId, ownerId, v));
  const client = await h.connect(ownerId);
  const lookup = hold(h.gate);
  client.send({ type: 'subscribe', taskId, since });
  await lookup.asked;
  for (let v = 31; v <= 40; v++) await h.app.mesh.taskUpdates.publish(update(taskId, ownerId, v));
  lookup.release();
  let v = 41;
  const live = setInterval(() => {
    if (v <= 80) void h.app.mesh.taskUpdates.publish(update(taskId, ownerId, v++));
  }, 1);
  const frames = await client.until((f) => f.version === 80);
  clearInterval(live);
  assert.deepEqual(frames[0], { type: 'subscribed', taskId });
  assert.deepEqual(
    frames.slice(1).map((f) => f.version),
    Array.from({ length: 79 }, (_, i) => i + 2),
  );
  await client.close();
});

test("PostgreSQL bus, two instances: since-subscribes to a task that moves away while its check waits, and to another tenant's streaming task, leak nothing", async () => {
  const db = await createTestDatabase();
  // B reads owners as the plugin does, from the tasks table, through a gate the test holds.
  const gate: Gate = {};
  const resolveOwners = gated(gate, sqlOwnerResolver(db.sql, DEFAULTS.tasks));
  const a = await startTestServer({ db, mesh: { bus: 'postgres' } });
  const b = await startTestServer({ db, mesh: { bus: 'postgres', resolveOwners, replay: { maxEvents: 3 } } });
  try {
    const mallory = await b.owner();
    const victim = await a.owner();
    const moving = await b.task(mallory.ownerId);
    const theirs = await a.task(victim.ownerId);
    const mine = await b.task(mallory.ownerId);
    const log = (taskId: string, content: string) =>
      db.sql`SELECT mesh_publish_task_output(${taskId}::uuid, NULL, 'assistant', ${content}, NULL, NULL, NULL, NULL, NULL, false)`;
    for (let i = 0; i < 5; i++) await log(moving, `m${i}`);
    for (let i = 0; i < 5; i++) await log(theirs, `t${i}`);
    const victimClient = await a.connect(victim.key);
    assert.deepEqual((await victimClient.request({ type: 'subscribeOutput', taskId: theirs })).type, 'outputSubscribed');
    const client = await b.connect(mallory.key);
    // The task is hers when the page is read; it moves to the victim before the check is answered.
    const lookup = hold(gate);
    client.send({ type: 'subscribeOutput', taskId: moving, since: 'start' });
    await lookup.asked;
    await db.sql`UPDATE tasks SET owner_id = ${victim.ownerId}::uuid WHERE id = ${moving}::uuid`;
    await log(moving, 'after the move');
    lookup.release();
    assert.deepEqual(await client.next(), notFound(moving));
    // Another tenant's task, streaming while she asks with every kind of since.
    const streaming = (async () => {
      for (let i = 5; i < 40; i++) await log(theirs, `t${i}`);
    })();
    for (const since of ['start', '0', 'garbage', `${'f'.repeat(8)}.1`])
      for (const type of ['subscribe', 'subscribeOutput']) {
        const answer = await client.request({ type, taskId: theirs, since });
        assert.deepEqual(answer, notFound(theirs), `${type} since ${since}`);
      }
    await streaming;
    assert.deepEqual(await client.request({ type: 'subscribeOutput', taskId: mine }), { type: 'outputSubscribed', taskId: mine });
    await log(mine, 'mine');
    const frames = await client.until((f) => f.taskId === mine && f.type === 'taskOutput');
    assert.deepEqual(shape(frames), [['taskOutput', mine, null]]);
    await victimClient.until((f) => f.content === 't39');
  } finally {
    await b.close();
    await a.close();
    await db.drop();
  }
});
