/**
 * Thousands of random and mutated frames against one server: each is answered as documented
 * (exactly one reply: an ack or an error with a known code), nothing crashes, and a well-behaved
 * client on the same server receives every event meanwhile, in order.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import fc from 'fast-check';
import WebSocket from 'ws';
import { ErrorCode } from '../src/index.js';
import { startTestServer, type TestServer } from './helpers/server.js';

let server: TestServer;
before(async () => {
  // A budget high enough that the parser, not the rate limiter, meets every frame.
  server = await startTestServer({ mesh: { maxFramesPerSecond: 1_000_000, frameBurst: 1_000_000 } });
});
after(() => server.close());

const TYPES = ['subscribe', 'unsubscribe', 'subscribeAll', 'unsubscribeAll', 'subscribeOutput', 'unsubscribeOutput'];
const ACKS = new Set(['subscribed', 'unsubscribed', 'subscribedAll', 'unsubscribedAll', 'outputSubscribed', 'outputUnsubscribed']);
const CODES = new Set<string>(Object.values(ErrorCode));

type Frame = { data: string | Buffer; fragments?: number };

const valid = fc.record({ type: fc.constantFrom(...TYPES), taskId: fc.uuid() }).map((f) => JSON.stringify(f));
const mutate = fc
  .tuple(valid, fc.array(fc.tuple(fc.nat(), fc.constantFrom('delete', 'insert', 'replace'), fc.string({ maxLength: 3 })), { maxLength: 4 }))
  .map(([text, edits]) =>
    edits.reduce((s, [at, op, chars]) => {
      const i = s.length === 0 ? 0 : at % s.length;
      if (op === 'delete') return s.slice(0, i) + s.slice(i + 1);
      if (op === 'insert') return s.slice(0, i) + chars + s.slice(i);
      return s.slice(0, i) + chars + s.slice(i + chars.length);
    }, text),
  );
const deep = fc
  .integer({ min: 100, max: 20_000 })
  .chain((depth) =>
    fc.constantFrom('['.repeat(depth) + ']'.repeat(depth), '{"a":'.repeat(depth / 5) + '1' + '}'.repeat(depth / 5), '['.repeat(depth)),
  );
const numbers = fc
  .constantFrom('1e999999', '-1e999999', '123456789012345678901234567890', 'NaN', 'Infinity')
  .map((n) => `{"type":"subscribe","taskId":${n}}`);
const wrongTypes = fc
  .record({ type: fc.oneof(fc.constantFrom(...TYPES), fc.anything()), taskId: fc.anything() }, { requiredKeys: [] })
  .map((f) => JSON.stringify(f) ?? 'undefined');
const longStrings = fc.integer({ min: 1_000, max: 60_000 }).map((n) => JSON.stringify({ type: 'subscribe', taskId: 'f'.repeat(n) }));
const anyJson = fc.json({ maxDepth: 6 });
const binary = fc.uint8Array({ minLength: 0, maxLength: 2_000 }).map((b) => Buffer.from(b));

const frames = fc.oneof(
  valid.map((data): Frame => ({ data })),
  mutate.map((data): Frame => ({ data })),
  deep.map((data): Frame => ({ data })),
  numbers.map((data): Frame => ({ data })),
  wrongTypes.map((data): Frame => ({ data })),
  longStrings.map((data): Frame => ({ data })),
  anyJson.map((data): Frame => ({ data })),
  fc.string({ maxLength: 200 }).map((data): Frame => ({ data })),
  binary.map((data): Frame => ({ data })),
  fc.tuple(anyJson, fc.integer({ min: 2, max: 5 })).map(([data, fragments]): Frame => ({ data, fragments })),
);

function send(socket: WebSocket, frame: Frame): void {
  if (!frame.fragments || typeof frame.data !== 'string' || frame.data.length < frame.fragments) {
    socket.send(frame.data, { binary: Buffer.isBuffer(frame.data) });
    return;
  }
  const size = Math.ceil(frame.data.length / frame.fragments);
  for (let i = 0; i < frame.data.length; i += size) {
    socket.send(frame.data.slice(i, i + size), { fin: i + size >= frame.data.length });
  }
}

test('random, mutated and hostile frames: one documented reply each, and no lost event for others', async () => {
  const { ownerId, key } = await server.owner();
  const taskId = await server.task(ownerId);
  const good = await server.connect(key);
  await good.request({ type: 'subscribe', taskId });
  const fuzzer = await server.connect((await server.owner()).key);

  const samples = fc.sample(frames, { numRuns: Number(process.env.FUZZ_RUNS ?? 3_000), seed: 20261122 });
  const EVENTS = 300;
  let published = 0;
  for (let i = 0; i < samples.length; i++) {
    send(fuzzer.socket, samples[i]!);
    if (i % 10 === 0 && published < EVENTS) {
      await server.app.mesh.taskUpdates.publish({ taskId, ownerId, version: ++published, status: 's', updatedFields: [], updatedBy: 'f' });
    }
    if (i % 50 === 0) await new Promise(setImmediate);
  }
  while (published < EVENTS) {
    await server.app.mesh.taskUpdates.publish({ taskId, ownerId, version: ++published, status: 's', updatedFields: [], updatedBy: 'f' });
  }

  const kinds = new Map<string, number>();
  for (let i = 0; i < samples.length; i++) {
    const reply = await fuzzer.next();
    const kind = reply.type === 'error' ? String(reply.code) : reply.type;
    assert.ok(reply.type === 'error' ? CODES.has(kind) : ACKS.has(kind), `unexpected reply ${JSON.stringify(reply)}`);
    kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
  }
  assert.ok((kinds.get('PARSE_ERROR') ?? 0) > 1_000, 'most frames were malformed');
  assert.ok((kinds.get('NOT_FOUND') ?? 0) > 0, 'some frames were well-formed subscribes');
  for (let version = 1; version <= EVENTS; version++) assert.equal((await good.next()).version, version);
  assert.equal(fuzzer.socket.readyState, WebSocket.OPEN);
  assert.deepEqual(await server.connect(key).then((c) => c.request({ type: 'subscribeAll' })), { type: 'subscribedAll' });
});

test('a text frame that is not UTF-8 is closed by ws with 1007; others are unaffected', async () => {
  const { key } = await server.owner();
  const bad = await server.connect(key);
  bad.socket.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), { binary: false });
  assert.equal((await bad.closed).code, 1007);
  const fine = await server.connect(key);
  assert.deepEqual(await fine.request({ type: 'subscribeAll' }), { type: 'subscribedAll' });
});
