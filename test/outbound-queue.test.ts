/**
 * Unit tests of a socket's outbound queue (src/core/outbound.ts) on a fake ClientSocket, with the
 * real FlushScheduler and Frames: one write per loop turn, control frames always in order, updates
 * conflated and output dropped (then `lagged`) over the soft limit, the hard limit and the time
 * limit, replayed frames, room for a replay's next page, a closed socket, forgotten output.
 *
 * Every frame ends in a newline, so that a joined write splits back into its frames.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { turn } from './helpers/async.js';
import { FlushScheduler } from '../src/core/flush-scheduler.js';
import { Frames } from '../src/core/frames.js';
import { Outbound, type BackpressureLimits, type BackpressureObserver } from '../src/core/outbound.js';
import type { ClientSocket } from '../src/core/ports.js';

const frame = (text: string) => Buffer.from(`${text}\n`);
const update = (taskId: string, version: number) => frame(`u:${taskId}:v${version}`);
const output = (taskId: string, cursor: string) => frame(`o:${taskId}@${cursor}`);
const lagged = (taskId: string, skipped: number, cursor: string) => JSON.stringify({ type: 'lagged', taskId, skipped, cursor });

/** A socket that records what is written; what it reports is set by the test. */
class FakeSocket implements ClientSocket {
  buffered = 0;
  open = true;
  /** Each call, in order: a write's chunk, or a writeAll's chunks. */
  readonly calls: ({ write: Buffer } | { writeAll: readonly Buffer[] })[] = [];
  /** Called after each write: lets a test make the socket's buffer grow. */
  onWrite: (() => void) | undefined;

  bufferedAmount(): number {
    return this.buffered;
  }
  isOpen(): boolean {
    return this.open;
  }
  write(chunk: Buffer): void {
    this.calls.push({ write: chunk });
    this.onWrite?.();
  }
  writeAll(chunks: readonly Buffer[]): void {
    this.calls.push({ writeAll: [...chunks] });
    this.onWrite?.();
  }
  ping(): void {}
  close(): void {}
  terminate(): void {}
  gone(): Promise<void> {
    return Promise.resolve();
  }

  /** The frames written, in order, as text (newlines dropped). */
  frames(): string[] {
    const chunks = this.calls.flatMap((call) => ('write' in call ? [call.write] : call.writeAll));
    return chunks.flatMap((chunk) => chunk.toString().split('\n').slice(0, -1));
  }
}

class RecordingObserver implements BackpressureObserver {
  readonly log: string[] = [];
  readonly caught: { superseded: number; lagged: Map<string, number> }[] = [];
  readonly writes: [bytes: number, frames: number][] = [];

  backedUp(): void {
    this.log.push('backedUp');
  }
  caughtUp(superseded: number, lagged: ReadonlyMap<string, number>): void {
    this.log.push('caughtUp');
    this.caught.push({ superseded, lagged: new Map(lagged) });
  }
  slow(why: 'buffer' | 'timeout'): void {
    this.log.push(`slow ${why}`);
  }
  wrote(bytes: number, frames: number): void {
    this.writes.push([bytes, frames]);
  }
}

const LIMITS: BackpressureLimits = { soft: 1_000, hard: 5_000, timeoutMs: 1_000 };

function setup(limits: BackpressureLimits = LIMITS) {
  const socket = new FakeSocket();
  const observer = new RecordingObserver();
  const outbound = new Outbound(socket, limits, new FlushScheduler(), new Frames((text) => Buffer.from(`${text}\n`)), observer);
  return { socket, observer, outbound };
}

describe('Outbound: writes', () => {
  test("a turn's frames leave in one write, joined, in order", async () => {
    const { socket, observer, outbound } = setup();
    outbound.control(frame('ack1'));
    outbound.update('t1', update('t1', 1));
    outbound.startOutput('t1', '0001');
    outbound.output('t1', output('t1', '0002'), '0002');
    outbound.replayed('update', 't2', update('t2', 9), '0003');
    outbound.control(frame('ack2'));
    assert.equal(socket.calls.length, 0, 'nothing is written before the turn ends');
    await turn();
    assert.equal(socket.calls.length, 1);
    assert.ok('write' in socket.calls[0]!, 'joined into one buffer');
    assert.deepEqual(socket.frames(), ['ack1', 'u:t1:v1', 'o:t1@0002', 'u:t2:v9', 'ack2']);
    const bytes = ['ack1', 'u:t1:v1', 'o:t1@0002', 'u:t2:v9', 'ack2'].reduce((sum, f) => sum + f.length + 1, 0);
    assert.deepEqual(observer.writes, [[bytes, 5]]);
    await turn();
    assert.equal(socket.calls.length, 1, 'nothing left to write');
  });

  test('one write per turn: frames of the next turn make the next write', async () => {
    const { socket, outbound } = setup();
    outbound.control(frame('a'));
    outbound.control(frame('b'));
    await turn();
    outbound.control(frame('c'));
    outbound.control(frame('d'));
    await turn();
    assert.equal(socket.calls.length, 2);
    assert.deepEqual(socket.frames(), ['a', 'b', 'c', 'd']);
  });

  test('a lone frame is written as it is, without a copy', async () => {
    const { socket, outbound } = setup();
    const ack = frame('ack');
    outbound.control(ack);
    await turn();
    assert.equal(socket.calls.length, 1);
    assert.equal((socket.calls[0] as { write: Buffer }).write, ack);
  });

  test("above 256 KiB, a turn's frames are corked with writeAll rather than joined", async () => {
    const { socket, observer, outbound } = setup({ soft: 4 << 20, hard: 16 << 20, timeoutMs: 1_000 });
    const big = [frame('x'.repeat(150 * 1024)), frame('y'.repeat(150 * 1024))];
    for (const f of big) outbound.control(f);
    await turn();
    assert.equal(socket.calls.length, 1);
    const call = socket.calls[0]!;
    assert.ok('writeAll' in call, 'one corked write');
    assert.equal(call.writeAll.length, 2);
    assert.equal(call.writeAll[0], big[0]);
    assert.equal(call.writeAll[1], big[1]);
    assert.deepEqual(observer.writes, [[big[0]!.length + big[1]!.length, 2]]);
  });

  test("sockets taking a turn's frames in the same order share one joined buffer; one that diverges keeps its order", async () => {
    const scheduler = new FlushScheduler();
    const frames = new Frames((text) => Buffer.from(`${text}\n`));
    const queues = [0, 1, 2].map(() => {
      const socket = new FakeSocket();
      const observer = new RecordingObserver();
      return { socket, observer, outbound: new Outbound(socket, LIMITS, scheduler, frames, observer) };
    });
    const [one, two, three] = queues;
    const events = [1, 2, 3].map((v) => update('t1', v));
    for (const [v, event] of events.entries()) {
      one!.outbound.update('t1', event);
      two!.outbound.update('t1', event);
      if (v === 1) three!.outbound.control(frame('ack')); // between two events: its own order from here on
      three!.outbound.update('t1', event);
    }
    await turn();
    const chunk = (q: (typeof queues)[number]) => (q.socket.calls[0] as { write: Buffer }).write;
    assert.equal(chunk(one!), chunk(two!), 'one join for both');
    assert.deepEqual(one!.socket.frames(), ['u:t1:v1', 'u:t1:v2', 'u:t1:v3']);
    assert.deepEqual(three!.socket.frames(), ['u:t1:v1', 'ack', 'u:t1:v2', 'u:t1:v3']);
    assert.deepEqual(three!.observer.writes, [[events.reduce((n, f) => n + f.length, 0) + 4, 4]]);
    for (const q of queues) assert.equal(q.socket.calls.length, 1);
  });

  test('nothing is written when the socket is no longer open', async () => {
    const { socket, observer, outbound } = setup();
    outbound.control(frame('ack'));
    outbound.update('t1', update('t1', 1));
    socket.open = false; // a close frame went either way
    await turn();
    assert.deepEqual(socket.calls, []);
    assert.deepEqual(observer.log, []);
  });

  test('after stop(), nothing is written, not even what was queued', async () => {
    const { socket, outbound } = setup();
    outbound.control(frame('ack'));
    outbound.stop();
    outbound.control(frame('later'));
    outbound.update('t1', update('t1', 1));
    await turn();
    assert.deepEqual(socket.calls, []);
  });
});

describe('Outbound: over the soft limit', () => {
  test('control frames are always sent, in order, however backed up the socket is', async () => {
    const { socket, outbound } = setup();
    socket.buffered = LIMITS.soft + 100;
    outbound.control(frame('ack1'));
    outbound.update('t1', update('t1', 1));
    outbound.startOutput('t1', '0001');
    outbound.output('t1', output('t1', '0002'), '0002');
    outbound.control(frame('ack2'));
    outbound.control(frame('error3'));
    await turn();
    assert.deepEqual(socket.frames(), ['ack1', 'ack2', 'error3']);
  });

  test('updates are conflated to the latest per task, and sent once the socket is under soft again', async () => {
    const { socket, observer, outbound } = setup();
    socket.buffered = LIMITS.soft;
    outbound.update('t1', update('t1', 1));
    outbound.update('t2', update('t2', 1));
    outbound.update('t1', update('t1', 2));
    outbound.update('t1', update('t1', 3));
    outbound.update('t2', update('t2', 2));
    await turn();
    assert.deepEqual(socket.calls, [], 'held while backed up');
    assert.deepEqual(observer.log, ['backedUp'], 'reported once');

    socket.buffered = LIMITS.soft; // still not under
    outbound.socketWritable();
    await turn();
    assert.deepEqual(socket.calls, []);

    socket.buffered = 0;
    outbound.socketWritable();
    assert.deepEqual(observer.caught, [{ superseded: 3, lagged: new Map() }]);
    await turn();
    assert.deepEqual(socket.frames(), ['u:t1:v3', 'u:t2:v2']);
    assert.equal(socket.calls.length, 1);

    outbound.update('t1', update('t1', 4));
    await turn();
    assert.deepEqual(socket.frames().at(-1), 'u:t1:v4', 'caught up: updates go out again');
  });

  test('while updates are held, new ones are held too, even under soft: none overtakes a held one', async () => {
    const { socket, observer, outbound } = setup();
    socket.buffered = LIMITS.soft;
    outbound.update('t1', update('t1', 1));
    socket.buffered = 0; // the peer took it all, but the socket has not said so yet
    outbound.update('t1', update('t1', 2));
    outbound.update('t2', update('t2', 1));
    await turn();
    assert.deepEqual(socket.calls, []);
    outbound.socketWritable();
    await turn();
    assert.deepEqual(socket.frames(), ['u:t1:v2', 'u:t2:v1'], 'the latest of t1, never v1 after v2');
    assert.deepEqual(observer.caught, [{ superseded: 1, lagged: new Map() }]);
  });

  test('output is dropped per task, then reported with `lagged` carrying the last cursor sent', async () => {
    const { socket, observer, outbound } = setup();
    outbound.startOutput('t1', '0010');
    outbound.startOutput('t2', '0020');
    outbound.output('t1', output('t1', '0011'), '0011');
    await turn();
    socket.buffered = LIMITS.soft;
    outbound.output('t1', output('t1', '0012'), '0012');
    outbound.output('t2', output('t2', '0021'), '0021');
    outbound.output('t1', output('t1', '0013'), '0013');
    await turn();
    assert.deepEqual(socket.frames(), ['o:t1@0011']);
    assert.deepEqual(observer.log, ['backedUp']);

    socket.buffered = 0;
    outbound.socketWritable();
    assert.deepEqual(observer.caught, [
      {
        superseded: 0,
        lagged: new Map([
          ['t1', 2],
          ['t2', 1],
        ]),
      },
    ]);
    await turn();
    assert.deepEqual(socket.frames(), ['o:t1@0011', lagged('t1', 2, '0011'), lagged('t2', 1, '0020')], 't2 sent nothing: its start');

    outbound.output('t1', output('t1', '0014'), '0014');
    await turn();
    assert.equal(socket.frames().at(-1), 'o:t1@0014', 'output flows again after `lagged`');
  });

  test('`lagged` waits until the socket is found under soft', async () => {
    const { socket, outbound } = setup();
    outbound.startOutput('t1', '0010');
    socket.buffered = LIMITS.soft;
    outbound.output('t1', output('t1', '0011'), '0011');
    outbound.socketWritable();
    await turn();
    assert.deepEqual(socket.calls, []);
    socket.buffered = LIMITS.soft - 1;
    outbound.socketWritable();
    await turn();
    assert.deepEqual(socket.frames(), [lagged('t1', 1, '0010')]);
  });

  test("once a task's output is being dropped, all of it is until `lagged`; other tasks flow", async () => {
    const { socket, outbound } = setup();
    outbound.startOutput('t1', '0010');
    outbound.startOutput('t2', '0020');
    socket.buffered = LIMITS.soft;
    outbound.output('t1', output('t1', '0011'), '0011');
    socket.buffered = 0; // under soft, but `lagged` has not gone out yet
    outbound.output('t1', output('t1', '0012'), '0012');
    outbound.output('t2', output('t2', '0021'), '0021');
    await turn();
    assert.deepEqual(socket.frames(), ['o:t2@0021'], 't1 stays dropped; t2 was never dropped');
    outbound.socketWritable();
    await turn();
    assert.deepEqual(socket.frames(), ['o:t2@0021', lagged('t1', 2, '0010')]);
  });

  test('forgetOutput: no `lagged` for a task no longer followed, and none reported', async () => {
    const { socket, observer, outbound } = setup();
    outbound.startOutput('t1', '0010');
    outbound.startOutput('t2', '0020');
    socket.buffered = LIMITS.soft;
    outbound.output('t1', output('t1', '0011'), '0011');
    outbound.output('t2', output('t2', '0021'), '0021');
    outbound.forgetOutput('t1');
    socket.buffered = 0;
    outbound.socketWritable();
    await turn();
    assert.deepEqual(socket.frames(), [lagged('t2', 1, '0020')]);
    // What the caught-up report counts as `lagged` frames sent is what was sent.
    assert.deepEqual(observer.caught.at(-1)?.lagged, new Map([['t2', 1]]));
  });

  test('replayed frames ignore the soft limit, and a replayed output moves the `lagged` cursor', async () => {
    const { socket, observer, outbound } = setup();
    outbound.startOutput('t1', '0010');
    socket.buffered = LIMITS.soft + 100;
    outbound.replayed('update', 't2', update('t2', 1), '0005');
    outbound.replayed('output', 't1', output('t1', '0011'), '0011');
    outbound.replayed('output', 't1', output('t1', '0012'), '0012');
    await turn();
    assert.deepEqual(socket.frames(), ['u:t2:v1', 'o:t1@0011', 'o:t1@0012']);
    assert.deepEqual(observer.log, [], 'replaying is not backing up');
    outbound.output('t1', output('t1', '0013'), '0013'); // live, over soft: dropped
    socket.buffered = 0;
    outbound.socketWritable();
    await turn();
    assert.equal(socket.frames().at(-1), lagged('t1', 1, '0012'));
  });
});

describe('Outbound: closing a slow consumer', () => {
  test('a frame that takes the socket over hard: slow(buffer) once, and nothing more is sent', async () => {
    const { socket, observer, outbound } = setup();
    outbound.control(frame('before'));
    await turn();
    socket.buffered = LIMITS.hard - 4;
    outbound.control(frame('ack')); // 4 bytes: at hard, not over
    assert.deepEqual(observer.log, []);
    outbound.control(frame('x'));
    assert.deepEqual(observer.log, ['slow buffer']);
    outbound.control(frame('later'));
    outbound.update('t1', update('t1', 1));
    outbound.startOutput('t1', '0001');
    outbound.output('t1', output('t1', '0002'), '0002');
    outbound.replayed('update', 't1', update('t1', 2), '0003');
    socket.buffered = 0;
    outbound.socketWritable();
    await turn();
    assert.deepEqual(socket.frames(), ['before'], 'what was queued is dropped too');
    // (update() and output() after stop() still report backedUp(): only `slow` and `caughtUp` matter here.)
    assert.deepEqual(
      observer.log.filter((call) => call !== 'backedUp'),
      ['slow buffer'],
      'slow once; never caught up',
    );
  });

  test('held updates count: past hard, slow(buffer)', async () => {
    const { socket, observer, outbound } = setup();
    socket.buffered = LIMITS.soft;
    const big = (v: number) => frame(`${v}`.padEnd(1_999, '.'));
    outbound.update('t1', big(1));
    outbound.update('t2', big(2)); // 1000 + 4000 held: at hard
    assert.deepEqual(observer.log, ['backedUp']);
    outbound.update('t2', big(3)); // supersedes: still at hard
    assert.deepEqual(observer.log, ['backedUp']);
    outbound.update('t3', frame('z'));
    assert.deepEqual(observer.log, ['backedUp', 'slow buffer']);
    outbound.update('t4', frame('w'));
    socket.buffered = 0;
    outbound.socketWritable();
    await turn();
    assert.deepEqual(socket.calls, []);
    assert.deepEqual(observer.log, ['backedUp', 'slow buffer']);
  });

  test('replayed frames still answer to the hard limit', async () => {
    const { socket, observer, outbound } = setup();
    socket.buffered = LIMITS.hard - 2;
    outbound.replayed('update', 't1', update('t1', 1), '0001');
    assert.deepEqual(observer.log, ['slow buffer']);
    await turn();
    assert.deepEqual(socket.calls, []);
  });

  test('a write that leaves the socket over hard: slow(buffer)', async () => {
    const { socket, observer, outbound } = setup();
    socket.onWrite = () => void (socket.buffered = LIMITS.hard + 1);
    outbound.control(frame('ack'));
    await turn();
    assert.deepEqual(socket.frames(), ['ack']);
    assert.deepEqual(observer.log, ['slow buffer']);
    outbound.control(frame('later'));
    await turn();
    assert.deepEqual(socket.frames(), ['ack']);
  });

  test("a turn's frames count the socket's bytes as read at its first frame; the flush reads them again", async () => {
    const { socket, observer, outbound } = setup();
    socket.buffered = LIMITS.hard - 10;
    outbound.control(frame('abc')); // 4 bytes: 6 to spare
    socket.buffered = 0; // the peer took bytes since: still counted until the flush (the cautious side)
    outbound.control(frame('abcdefg')); // 8 more: over hard as the turn began
    assert.deepEqual(observer.log, ['slow buffer']);

    const second = setup();
    second.outbound.control(frame('ack'));
    second.socket.buffered = LIMITS.hard + 1; // grown within the turn by what ws writes itself (a pong)
    await turn();
    assert.deepEqual(second.socket.frames(), ['ack']);
    assert.deepEqual(second.observer.log, ['slow buffer'], 'the flush reads the socket afresh');
  });

  test('backed up for longer than timeoutMs: checkStalled reports slow(timeout), once', async () => {
    const { socket, observer, outbound } = setup();
    outbound.checkStalled(performance.now() + 1e9);
    assert.deepEqual(observer.log, [], 'not backed up: never stalled');

    outbound.startOutput('t1', '0001');
    socket.buffered = LIMITS.soft;
    const before = performance.now();
    outbound.output('t1', output('t1', '0002'), '0002');
    const after = performance.now();
    outbound.checkStalled(before + LIMITS.timeoutMs);
    assert.deepEqual(observer.log, ['backedUp'], 'not past the limit yet');
    outbound.checkStalled(after + LIMITS.timeoutMs + 1);
    assert.deepEqual(observer.log, ['backedUp', 'slow timeout']);
    outbound.checkStalled(after + 2 * LIMITS.timeoutMs);
    assert.deepEqual(observer.log, ['backedUp', 'slow timeout']);
    socket.buffered = 0;
    outbound.socketWritable();
    await turn();
    assert.deepEqual(socket.calls, [], 'nothing after being closed as slow, not even `lagged`');
  });

  test('a socket that caught up is not stalled', () => {
    const { socket, observer, outbound } = setup();
    socket.buffered = LIMITS.soft;
    outbound.update('t1', update('t1', 1));
    socket.buffered = 0;
    outbound.socketWritable();
    outbound.checkStalled(performance.now() + 1e9);
    assert.deepEqual(observer.log, ['backedUp', 'caughtUp']);
  });
});

describe('Outbound: room for a replay', () => {
  /** Whether `promise` has settled, after the microtasks queued so far. */
  async function settled(promise: Promise<void>): Promise<boolean> {
    let done = false;
    void promise.then(() => (done = true));
    await Promise.resolve();
    await Promise.resolve();
    return done;
  }

  test('roomFor resolves at once when fewer bytes than asked are pending', async () => {
    const { outbound } = setup();
    assert.equal(await settled(outbound.roomFor(100)), true);
  });

  test('roomFor waits until the socket reports fewer pending bytes', async () => {
    const { socket, outbound } = setup();
    socket.buffered = 500;
    const room = outbound.roomFor(100);
    await turn();
    assert.equal(await settled(room), false);
    socket.buffered = 100; // not below
    outbound.socketWritable();
    assert.equal(await settled(room), false);
    socket.buffered = 99;
    outbound.socketWritable();
    assert.equal(await settled(room), true);
  });

  test('bytes waiting for the flush count; the flush that writes them makes room', async () => {
    const { socket, outbound } = setup();
    outbound.replayed('update', 't1', frame('p'.repeat(199)), '0001'); // 200 bytes queued
    const room = outbound.roomFor(100);
    assert.equal(await settled(room), false);
    await turn(); // written; the fake socket takes everything at once
    assert.equal(socket.calls.length, 1);
    assert.equal(await settled(room), true);
  });

  test('stop() releases a replay waiting for room, and later asks get room at once', async () => {
    const { socket, outbound } = setup();
    socket.buffered = 500;
    const room = outbound.roomFor(100);
    assert.equal(await settled(room), false);
    outbound.stop();
    assert.equal(await settled(room), true);
    assert.equal(await settled(outbound.roomFor(100)), true);
  });
});
