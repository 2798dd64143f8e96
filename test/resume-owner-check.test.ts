/**
 * A new subscription with `since` (what a reconnecting client sends) has one owner check: the one
 * its first page makes once read. Until that check grants it, nothing of the stream goes out, not
 * even its ack. These tests attack that as a tenant would: another's task with every kind of
 * `since` (whose replay would say how far behind it is), owner lookups that fail, live events that
 * arrive while the check waits, and the subscription slots a refused subscribe must not keep.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, test } from 'node:test';
import Fastify, { type FastifyInstance } from 'fastify';
import meshSubscriptions from '../src/index.js';
import { TestClient, type Frame } from './helpers/ws-client.js';

const hosts: FastifyInstance[] = [];
after(() => Promise.all(hosts.map((app) => app.close())));

interface Host {
  app: FastifyInstance;
  /** Task → owner, as the host's tasks table has it. */
  tasks: Map<string, string | null>;
  /** Owner lookups fail while set. */
  trouble: { owners: boolean };
  /** While `held` is set, owner lookups wait for it (and call `asked`). */
  gate: { held: Promise<void> | undefined; asked?: () => void };
  connect(ownerId: string): Promise<TestClient>;
}

/** A host with the memory bus whose tasks table is a Map; a socket's token is its owner id. */
async function host(): Promise<Host> {
  const tasks = new Map<string, string | null>();
  const trouble = { owners: false };
  const gate: Host['gate'] = { held: undefined };
  const app = Fastify();
  hosts.push(app);
  await app.register(meshSubscriptions, {
    bus: 'memory',
    authenticate: async (request) => {
      const token = request.headers['x-owner'];
      return typeof token === 'string' ? { ownerId: token, admin: false } : null;
    },
    resolveOwners: async (ids) => {
      if (gate.held) {
        gate.asked?.();
        await gate.held;
      }
      if (trouble.owners) throw new Error('the tasks table is out of reach');
      return new Map(ids.filter((id) => tasks.has(id)).map((id) => [id, tasks.get(id)!]));
    },
    // Small, so that an old `since` is too far behind, and leaked slots show at once.
    replay: { maxEvents: 2 },
    limits: { maxSubscriptionsPerConnection: 2 },
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const url = `ws://127.0.0.1:${(app.server.address() as { port: number }).port}/api/v1/mesh/tasks/subscribe`;
  return { app, tasks, trouble, gate, connect: (ownerId) => TestClient.connect(url, { 'x-owner': ownerId }) };
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

/** Holds owner lookups until released; `asked` resolves once one waits. */
function hold(h: Host): { asked: Promise<void>; release(): void } {
  let release!: () => void;
  let asked!: () => void;
  const askedOnce = new Promise<void>((resolve) => (asked = resolve));
  h.gate.held = new Promise<void>((resolve) => (release = resolve));
  h.gate.asked = asked;
  return {
    asked: askedOnce,
    release: () => {
      h.gate.held = undefined;
      release();
    },
  };
}

test('live events that come while the check waits go out after the ack, in order, once each', async () => {
  const h = await host();
  const ownerId = randomUUID();
  const taskId = randomUUID();
  h.tasks.set(taskId, ownerId);
  const since = await h.app.mesh.taskUpdates.publish(update(taskId, ownerId, 1));
  await h.app.mesh.taskUpdates.publish(update(taskId, ownerId, 2));
  const client = await h.connect(ownerId);
  const lookup = hold(h);
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
  const lookup = hold(h);
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
