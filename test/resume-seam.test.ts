/**
 * Unit tests of resume seams (src/core/resume.ts) on a scripted history and a recording output,
 * without a socket or a database: pages in order then live, live frames set aside during a page's
 * read, the seam's floor, the byte budget, `behind()`, bursts of resumes (no update carried twice
 * by `subscribe` and `subscribeAll`), resyncs, failures, a socket closing mid-replay, and `forget`.
 *
 * Cursors are zero-padded numbers, ordered numerically. A frame's bytes name it: `u:t1@0007` is
 * task t1's update at cursor 0007, `o:t1@0007` its output.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { deferred, turn, type Deferred } from './helpers/async.js';
import type { ReplayStream } from '../src/bus/bus.js';
import { Frames } from '../src/core/frames.js';
import type { History, ReplayResult, Replayed } from '../src/core/history-types.js';
import type { MetricsSink, Principal } from '../src/core/ports.js';
import { BURST_LIVE_LIMIT, ResumeSeams, type ResumeOutput, type Resumer } from '../src/core/resume.js';

const c = (n: number): string => String(n).padStart(6, '0');
const text = (kind: 'update' | 'output', taskId: string, n: number) => `${kind === 'update' ? 'u' : 'o'}:${taskId}@${c(n)}`;
const replayed = (kind: 'update' | 'output', taskId: string, n: number): Replayed => ({
  kind,
  taskId,
  cursor: c(n),
  frame: Buffer.from(text(kind, taskId, n)),
});
const u = (taskId: string, n: number) => replayed('update', taskId, n);
const o = (taskId: string, n: number) => replayed('output', taskId, n);
const page = (frames: Replayed[], last: number, more: boolean): ReplayResult => ({ ok: true, page: { frames, last: c(last), more } });

interface Read {
  principal: Principal;
  stream: ReplayStream;
  after: string;
  first: boolean;
  answer: Deferred<ReplayResult>;
}

/** A history whose pages the test answers, one read at a time. */
class ScriptedHistory implements History {
  readonly reads: Read[] = [];
  headCursor = c(0);
  isBehind = false;

  replayPage(principal: Principal, stream: ReplayStream, after: string, first: boolean): Promise<ReplayResult> {
    const answer = deferred<ReplayResult>();
    this.reads.push({ principal, stream: { ...stream }, after, first, answer });
    return answer.promise;
  }

  head(): string {
    return this.headCursor;
  }

  compare(a: string, b: string): number {
    return Number(a) - Number(b);
  }

  behind(): boolean {
    return this.isBehind;
  }

  /** The read under way, which must be the `count`th. */
  read(count: number): Read {
    assert.equal(this.reads.length, count, `${count} page read(s) so far`);
    return this.reads[count - 1]!;
  }
}

/** Records what the seams send, in order, as the frames' text. */
class RecordingOutput implements ResumeOutput {
  readonly log: string[] = [];
  /** When set, roomFor waits for the test; otherwise there is room at once. */
  room: Deferred<void> | undefined;

  replayed(kind: 'update' | 'output', taskId: string, frame: Buffer, cursor: string): void {
    this.log.push(`replay ${this.check(frame, kind, taskId, cursor)}`);
  }
  update(taskId: string, frame: Buffer): void {
    this.log.push(`update ${frame.toString()}${frame.toString().startsWith(`u:${taskId}@`) ? '' : ' (wrong task)'}`);
  }
  output(taskId: string, frame: Buffer, cursor: string): void {
    this.log.push(`output ${this.check(frame, 'output', taskId, cursor)}`);
  }
  control(frame: Buffer): void {
    this.log.push(`control ${frame.toString()}`);
  }
  startOutput(taskId: string, cursor: string): void {
    this.log.push(`startOutput ${taskId} ${cursor}`);
  }
  roomFor(below: number): Promise<void> {
    this.log.push(`roomFor ${below}`);
    return this.room?.promise ?? Promise.resolve();
  }

  /** The frame's text, flagged if the task or cursor passed with it are not the frame's own. */
  private check(frame: Buffer, kind: 'update' | 'output', taskId: string, cursor: string): string {
    const expected = `${kind === 'update' ? 'u' : 'o'}:${taskId}@${cursor}`;
    return frame.toString() === expected ? expected : `${frame.toString()} (passed as ${expected})`;
  }
}

function recordingMetrics(sent: string[]): MetricsSink {
  const ignore = () => {};
  return {
    frameIn: ignore,
    sent: (type, count) => void sent.push(`${type}${count === undefined ? '' : ` ${count}`}`),
    delivered: ignore,
    written: ignore,
    error: ignore,
    closed: ignore,
    droppedEvent: ignore,
    authFailed: ignore,
  };
}

interface Options {
  updates?: string[];
  all?: boolean;
  asideBytes?: number;
  pageRoom?: number;
}

const PAGE_ROOM = 64;

function setup(options: Options = {}) {
  const history = new ScriptedHistory();
  const out = new RecordingOutput();
  const sent: string[] = [];
  const failures: unknown[] = [];
  const socket: Resumer & { principal: Principal; open: boolean } = {
    principal: { ownerId: 'o1', admin: false },
    updates: new Set(options.updates ?? ['t1']),
    all: options.all ?? false,
    open: true,
    lostSight: () => assert.fail('no test here takes a task away'),
    isOpen() {
      return this.open;
    },
  };
  const seams = new ResumeSeams(
    socket,
    history,
    out,
    new Frames((json) => Buffer.from(json)),
    recordingMetrics(sent),
    { asideBytes: options.asideBytes ?? 1_000_000, pageRoom: options.pageRoom ?? PAGE_ROOM },
    (error) => void failures.push(error),
  );
  /**
   * A live frame for this socket, handled as ClientConnection.sendUpdate / sendOutput do: the
   * seams take it, or it goes out now. Returns whether the seams took it.
   */
  const live = (kind: 'update' | 'output', taskId: string, n: number): boolean => {
    const frame = Buffer.from(text(kind, taskId, n));
    if (seams.takesLive(kind, taskId, c(n), frame)) return true;
    if (kind === 'update') {
      seams.sentLive(c(n));
      out.update(taskId, frame);
    } else out.output(taskId, frame, c(n));
    return false;
  };
  return { seams, history, out, sent, failures, socket, live };
}

type Setup = ReturnType<typeof setup>;

/**
 * Waits for a resume() to finish: it must within a few loop turns once its last page is answered.
 * (A replay left waiting on a read the test does not answer fails here, by name, instead of
 * leaving the test runner with nothing to wait for.)
 */
async function finished(replay: Promise<void>, history: ScriptedHistory): Promise<void> {
  let done = false;
  void replay.then(() => (done = true));
  for (let i = 0; i < 20 && !done; i++) await turn();
  assert.ok(done, `the replay did not finish; ${history.reads.length} page read(s) made`);
}

/** Resumes `subscribe` of t1 from `since` and answers its single page. */
async function resumeTask(s: Setup, taskId: string, since: number, frames: Replayed[], last: number): Promise<void> {
  const done = s.seams.resume('subscribe', { kind: 'update', taskId }, c(since));
  s.history.read(s.history.reads.length).answer.resolve(page(frames, last, false));
  await finished(done, s.history);
}

const resyncFrame = (subscription: string, taskId: string | undefined, reason: string) =>
  `control ${JSON.stringify({ type: 'resyncRequired', subscription, taskId, reason })}`;

describe('ResumeSeams: replay, then live', () => {
  test('pages are replayed in order, each read after the last, then the stream is live', async () => {
    const s = setup();
    const done = s.seams.resume('subscribe', { kind: 'update', taskId: 't1' }, c(5));
    const first = s.history.read(1);
    assert.deepEqual([first.stream, first.after, first.first], [{ kind: 'update', taskId: 't1' }, c(5), true]);
    first.answer.resolve(page([u('t1', 6), u('t1', 7)], 7, true));
    await turn();
    const second = s.history.read(2);
    assert.deepEqual([second.after, second.first], [c(7), false], 'the next page starts after the last one');
    second.answer.resolve(page([u('t1', 8)], 8, false));
    await finished(done, s.history);
    assert.equal(s.history.reads.length, 2, 'no page after one without `more`');
    assert.deepEqual(s.out.log, [
      `replay ${text('update', 't1', 6)}`,
      `replay ${text('update', 't1', 7)}`,
      `roomFor ${PAGE_ROOM}`,
      `replay ${text('update', 't1', 8)}`,
    ]);
    assert.deepEqual(s.sent, ['taskUpdated 2', 'taskUpdated 1']);

    assert.equal(s.live('update', 't1', 9), false, 'a newer live frame goes out');
    assert.deepEqual(s.out.log.slice(4), [`update ${text('update', 't1', 9)}`]);
    assert.deepEqual(s.failures, []);
  });

  test('an output stream replays as output, and its live frames set aside go out as output', async () => {
    const s = setup();
    const done = s.seams.resume('subscribeOutput', { kind: 'output', taskId: 't1' }, c(1));
    assert.equal(s.live('output', 't1', 4), true);
    s.history.read(1).answer.resolve(page([o('t1', 2), o('t1', 3)], 3, false));
    await finished(done, s.history);
    assert.deepEqual(s.out.log, [
      `replay ${text('output', 't1', 2)}`,
      `replay ${text('output', 't1', 3)}`,
      `output ${text('output', 't1', 4)}`,
    ]);
    assert.deepEqual(s.sent, ['taskOutput 2']);
  });

  test("live frames arriving during the last page's read are set aside and sent after it, only those newer than its last cursor", async () => {
    const s = setup();
    const done = s.seams.resume('subscribe', { kind: 'update', taskId: 't1' }, c(5));
    // During the first page's read: the next page will hold these.
    assert.equal(s.live('update', 't1', 6), true);
    assert.equal(s.live('update', 't1', 7), true);
    s.history.read(1).answer.resolve(page([u('t1', 6)], 6, true));
    await turn();
    // During the last page's read: 8 is in its snapshot, 9 and 10 came after it.
    for (const n of [8, 9, 10]) assert.equal(s.live('update', 't1', n), true, `live ${n} is taken while replaying`);
    assert.deepEqual(s.out.log, [`replay ${text('update', 't1', 6)}`, `roomFor ${PAGE_ROOM}`], 'nothing live went out during the replay');
    s.history.read(2).answer.resolve(page([u('t1', 7), u('t1', 8)], 8, false));
    await finished(done, s.history);
    assert.deepEqual(
      s.out.log,
      [
        `replay ${text('update', 't1', 6)}`,
        `roomFor ${PAGE_ROOM}`,
        `replay ${text('update', 't1', 7)}`,
        `replay ${text('update', 't1', 8)}`,
        `update ${text('update', 't1', 9)}`,
        `update ${text('update', 't1', 10)}`,
      ],
      'every update once, in order: no repeat, no gap',
    );
  });

  test("after the replay, live frames at or before the seam's floor are repeats; the first newer one ends the seam", async () => {
    const s = setup();
    await resumeTask(s, 't1', 5, [u('t1', 6), u('t1', 8)], 8);
    const replay = s.out.log.length;
    assert.equal(s.live('update', 't1', 7), true, 'before the floor: a repeat');
    assert.equal(s.live('update', 't1', 8), true, 'at the floor: a repeat');
    assert.deepEqual(s.out.log.slice(replay), []);
    assert.equal(s.live('update', 't1', 9), false, 'past the floor: live');
    // The seam is gone: nothing is taken any more, even a cursor it would have called a repeat.
    assert.equal(s.live('update', 't1', 3), false);
    assert.deepEqual(s.out.log.slice(replay), [`update ${text('update', 't1', 9)}`, `update ${text('update', 't1', 3)}`]);
  });

  test("a `since` ahead of the replay's last cursor is the floor: live frames up to it are repeats", async () => {
    const s = setup();
    await resumeTask(s, 't1', 20, [], 12);
    assert.deepEqual(s.out.log, []);
    assert.equal(s.live('update', 't1', 15), true);
    assert.equal(s.live('update', 't1', 20), true);
    assert.equal(s.live('update', 't1', 21), false);
    assert.deepEqual(s.out.log, [`update ${text('update', 't1', 21)}`]);
  });

  test('set-aside bytes over `asideBytes` are dropped, and another page is read instead', async () => {
    const frameBytes = text('update', 't1', 0).length;
    const s = setup({ asideBytes: 3 * frameBytes + 1 });
    const done = s.seams.resume('subscribe', { kind: 'update', taskId: 't1' }, c(5));
    for (const n of [9, 10, 11, 12, 13]) assert.equal(s.live('update', 't1', n), true, `live ${n} is taken, past the budget too`);
    // The page says it is the last, but what came meanwhile was dropped: the replay reads on.
    s.history.read(1).answer.resolve(page([u('t1', 6), u('t1', 7), u('t1', 8)], 8, false));
    await turn();
    const second = s.history.read(2);
    assert.deepEqual([second.after, second.first], [c(8), false]);
    assert.equal(s.live('update', 't1', 14), true, "the new page's read sets aside afresh");
    second.answer.resolve(
      page(
        [9, 10, 11, 12, 13].map((n) => u('t1', n)),
        13,
        false,
      ),
    );
    await finished(done, s.history);
    assert.deepEqual(s.out.log, [
      ...[6, 7, 8].map((n) => `replay ${text('update', 't1', n)}`),
      `roomFor ${PAGE_ROOM}`,
      ...[9, 10, 11, 12, 13].map((n) => `replay ${text('update', 't1', n)}`),
      `update ${text('update', 't1', 14)}`,
    ]);
  });

  test('while the history is behind, a newer live frame goes out but the seam stays', async () => {
    const s = setup();
    await resumeTask(s, 't1', 5, [u('t1', 6), u('t1', 8)], 8);
    const replay = s.out.log.length;
    s.history.isBehind = true;
    assert.equal(s.live('update', 't1', 9), false, 'newer: sent');
    // An older event still waiting for its owner's lookup arrives late: still a repeat.
    assert.equal(s.live('update', 't1', 8), true, 'the seam is kept while the history is behind');
    s.history.isBehind = false;
    assert.equal(s.live('update', 't1', 10), false);
    assert.equal(s.live('update', 't1', 8), false, 'the seam ended once the history caught up');
    assert.deepEqual(s.out.log.slice(replay), [
      `update ${text('update', 't1', 9)}`,
      `update ${text('update', 't1', 10)}`,
      `update ${text('update', 't1', 8)}`,
    ]);
  });

  test("frames of the socket's streams that are not resuming are never taken", async () => {
    const s = setup({ updates: ['t1', 't2'] });
    const done = s.seams.resume('subscribe', { kind: 'update', taskId: 't1' }, c(5));
    assert.equal(s.live('update', 't2', 7), false, "another task's updates");
    assert.equal(s.live('output', 't1', 8), false, "the same task's output");
    assert.equal(s.live('update', 't1', 9), true, "the resuming stream's own");
    s.history.read(1).answer.resolve(page([u('t1', 6)], 6, false));
    await finished(done, s.history);
    assert.deepEqual(s.out.log, [
      `update ${text('update', 't2', 7)}`,
      `output ${text('output', 't1', 8)}`,
      `replay ${text('update', 't1', 6)}`,
      `update ${text('update', 't1', 9)}`,
    ]);
  });

  test('an update also carried by a live `subscribeAll` waits for the task’s own replay: the task’s updates stay in log order', async () => {
    const s = setup({ updates: ['t1'], all: true });
    const done = s.seams.resume('subscribe', { kind: 'update', taskId: 't1' }, c(5));
    assert.equal(s.live('update', 't1', 6), true, 't1: held for the replay of u:t1, though `all` is live');
    assert.equal(s.live('update', 't1', 8), true);
    assert.equal(s.live('update', 't3', 7), false, 't3: only the `all` stream carries it');
    s.history.read(1).answer.resolve(page([u('t1', 6)], 6, false));
    await finished(done, s.history);
    assert.deepEqual(s.out.log, [
      `update ${text('update', 't3', 7)}`,
      `replay ${text('update', 't1', 6)}`,
      `update ${text('update', 't1', 8)}`,
    ]);
  });

  test('a `subscribeAll` replay reads what the principal may see at each page', async () => {
    const s = setup({ all: true });
    const done = s.seams.resume('subscribeAll', { kind: 'all', ownerId: 'o1' }, c(0));
    assert.deepEqual(s.history.read(1).stream, { kind: 'all', ownerId: 'o1' });
    s.history.read(1).answer.resolve(page([u('t7', 1)], 1, true));
    s.socket.principal = { ownerId: 'o1', admin: true }; // re-authenticated as an admin meanwhile
    await turn();
    assert.deepEqual(s.history.read(2).stream, { kind: 'all', ownerId: null });
    s.history.read(2).answer.resolve(page([], 1, false));
    await finished(done, s.history);
  });
});

describe('ResumeSeams: a burst of resumes', () => {
  test('a `subscribeAll` replay skips what a `subscribe` replay of the burst sent', async () => {
    const s = setup({ updates: ['t1'], all: true });
    await resumeTask(s, 't1', 0, [u('t1', 2), u('t1', 4)], 4);
    const done = s.seams.resume('subscribeAll', { kind: 'all', ownerId: 'o1' }, c(0));
    s.history.read(2).answer.resolve(page([u('t1', 2), u('t2', 3), u('t1', 4), u('t2', 5), u('t1', 6)], 6, false));
    await finished(done, s.history);
    assert.deepEqual(s.out.log, [
      `replay ${text('update', 't1', 2)}`,
      `replay ${text('update', 't1', 4)}`,
      `replay ${text('update', 't2', 3)}`,
      `replay ${text('update', 't2', 5)}`,
      `replay ${text('update', 't1', 6)}`,
    ]);
    assert.deepEqual(s.sent, ['taskUpdated 2', 'taskUpdated 3'], 'what is skipped is not counted');
  });

  test('a `subscribe` replay skips what a `subscribeAll` replay of the burst sent', async () => {
    const s = setup({ updates: ['t1'], all: true });
    const all = s.seams.resume('subscribeAll', { kind: 'all', ownerId: 'o1' }, c(0));
    s.history.read(1).answer.resolve(page([u('t1', 2), u('t2', 3)], 3, false));
    await finished(all, s.history);
    await resumeTask(s, 't1', 0, [u('t1', 2), u('t1', 4)], 4);
    assert.deepEqual(s.out.log, [
      `replay ${text('update', 't1', 2)}`,
      `replay ${text('update', 't2', 3)}`,
      `replay ${text('update', 't1', 4)}`,
    ]);
  });

  test('a later replay of the burst skips updates sent live meanwhile (sentLive)', async () => {
    const s = setup({ updates: ['t1'], all: true });
    const one = s.seams.resume('subscribe', { kind: 'update', taskId: 't1' }, c(0));
    assert.equal(s.live('update', 't2', 5), false, 'carried by `all` only, which is live');
    s.history.read(1).answer.resolve(page([u('t1', 2)], 4, false));
    await finished(one, s.history);
    const all = s.seams.resume('subscribeAll', { kind: 'all', ownerId: 'o1' }, c(0));
    s.history.read(2).answer.resolve(page([u('t1', 2), u('t2', 5), u('t2', 6)], 6, false));
    await finished(all, s.history);
    assert.deepEqual(s.out.log, [
      `update ${text('update', 't2', 5)}`,
      `replay ${text('update', 't1', 2)}`,
      `replay ${text('update', 't2', 6)}`,
    ]);
  });

  test('an update sent from aside is not replayed again by a later replay of the burst', async () => {
    const s = setup({ updates: ['t1', 't2'], all: true });
    // t2's own replay is under way (unanswered) when subscribeAll's runs; t2's update 7 comes live during the latter's read.
    s.seams.resume('subscribe', { kind: 'update', taskId: 't2' }, c(0)); // keeps a `u:t2` seam under way, unanswered
    const all = s.seams.resume('subscribeAll', { kind: 'all', ownerId: 'o1' }, c(0));
    assert.equal(s.live('update', 't2', 7), true, "both of t2's streams resume: set aside");
    s.history.read(2).answer.resolve(page([u('t3', 1)], 6, false));
    await finished(all, s.history);
    assert.deepEqual(s.out.log, [`replay ${text('update', 't3', 1)}`, `update ${text('update', 't2', 7)}`]);
    // t2's own replay (read before 7 was published) then reaches 7: not sent twice.
    s.history.reads[0]!.answer.resolve(page([u('t2', 7)], 7, false));
    await turn();
    assert.deepEqual(s.out.log, [`replay ${text('update', 't3', 1)}`, `update ${text('update', 't2', 7)}`]);
  });

  test("burstOver() ends the burst's memory: a later replay sends everything it reads", async () => {
    const s = setup({ updates: ['t1'], all: true });
    await resumeTask(s, 't1', 0, [u('t1', 2), u('t1', 4)], 4);
    s.seams.burstOver();
    const all = s.seams.resume('subscribeAll', { kind: 'all', ownerId: 'o1' }, c(0));
    s.history.read(2).answer.resolve(page([u('t1', 2), u('t1', 4)], 4, false));
    await finished(all, s.history);
    assert.deepEqual(
      s.out.log,
      [2, 4, 2, 4].map((n) => `replay ${text('update', 't1', n)}`),
    );
  });

  test(`the burst remembers at most BURST_LIVE_LIMIT (${BURST_LIVE_LIMIT}) live updates`, async () => {
    const s = setup({ updates: ['t1'], all: true });
    await resumeTask(s, 't1', 0, [], 0); // opens the burst
    for (let n = 1; n <= BURST_LIVE_LIMIT + 1; n++) s.seams.sentLive(c(n));
    const all = s.seams.resume('subscribeAll', { kind: 'all', ownerId: 'o1' }, c(0));
    s.history
      .read(2)
      .answer.resolve(page([u('t9', 1), u('t9', BURST_LIVE_LIMIT), u('t9', BURST_LIVE_LIMIT + 1)], BURST_LIVE_LIMIT + 1, false));
    await finished(all, s.history);
    assert.deepEqual(
      s.out.log,
      [`replay ${text('update', 't9', BURST_LIVE_LIMIT + 1)}`],
      'the first LIMIT are skipped; the one past it is not remembered',
    );
  });

  test('sentLive outside a burst is not remembered', async () => {
    const s = setup({ updates: ['t1'], all: true });
    s.seams.sentLive(c(3));
    const all = s.seams.resume('subscribeAll', { kind: 'all', ownerId: 'o1' }, c(0));
    s.history.read(1).answer.resolve(page([u('t2', 3)], 3, false));
    await finished(all, s.history);
    assert.deepEqual(s.out.log, [`replay ${text('update', 't2', 3)}`]);
  });
});

describe('ResumeSeams: resyncs, failures, closing, room, forget', () => {
  test('an output resume that cannot be made: startOutput at the head, then resyncRequired; the stream is live', async () => {
    const s = setup();
    s.history.headCursor = c(42);
    const done = s.seams.resume('subscribeOutput', { kind: 'output', taskId: 't1' }, c(5));
    assert.equal(s.live('output', 't1', 43), true, 'taken while the first page is read');
    s.history.read(1).answer.resolve({ ok: false, resync: 'expired' });
    await finished(done, s.history);
    assert.deepEqual(s.out.log, [
      `startOutput t1 ${c(42)}`,
      resyncFrame('subscribeOutput', 't1', 'expired'),
      `output ${text('output', 't1', 43)}`,
    ]);
    assert.deepEqual(s.sent, ['resyncRequired']);
    assert.equal(s.live('output', 't1', 44), false, 'the seam is gone');
  });

  test('a `subscribe` resync says so without touching output; a `subscribeAll` one names no task', async () => {
    const s = setup({ all: true });
    const one = s.seams.resume('subscribe', { kind: 'update', taskId: 't1' }, c(5));
    s.history.read(1).answer.resolve({ ok: false, resync: 'unknownCursor' });
    await finished(one, s.history);
    const all = s.seams.resume('subscribeAll', { kind: 'all', ownerId: 'o1' }, c(5));
    s.history.read(2).answer.resolve({ ok: false, resync: 'tooFarBehind' });
    await finished(all, s.history);
    assert.deepEqual(s.out.log, [resyncFrame('subscribe', 't1', 'unknownCursor'), resyncFrame('subscribeAll', undefined, 'tooFarBehind')]);
    assert.deepEqual(s.sent, ['resyncRequired', 'resyncRequired']);
  });

  test('a resync on a later page comes after the pages already sent', async () => {
    const s = setup();
    const done = s.seams.resume('subscribe', { kind: 'update', taskId: 't1' }, c(5));
    s.history.read(1).answer.resolve(page([u('t1', 6)], 6, true));
    await turn();
    s.history.read(2).answer.resolve({ ok: false, resync: 'expired' });
    await finished(done, s.history);
    assert.deepEqual(s.out.log, [`replay ${text('update', 't1', 6)}`, `roomFor ${PAGE_ROOM}`, resyncFrame('subscribe', 't1', 'expired')]);
  });

  test('a page read that rejects: onReplayFailed, then resyncRequired `unavailable`; resume() still resolves', async () => {
    const s = setup();
    const error = new Error('log down');
    const done = s.seams.resume('subscribe', { kind: 'update', taskId: 't1' }, c(5));
    assert.equal(s.live('update', 't1', 6), true);
    s.history.read(1).answer.reject(error);
    await finished(done, s.history);
    assert.deepEqual(s.failures, [error]);
    assert.deepEqual(
      s.out.log,
      [resyncFrame('subscribe', 't1', 'unavailable'), `update ${text('update', 't1', 6)}`],
      'then what came live meanwhile',
    );
    assert.equal(s.live('update', 't1', 7), false, 'live again');
  });

  test('a page read that rejects after the socket closed reports nothing', async () => {
    const s = setup();
    const done = s.seams.resume('subscribe', { kind: 'update', taskId: 't1' }, c(5));
    s.socket.open = false;
    s.history.read(1).answer.reject(new Error('log down'));
    await finished(done, s.history);
    assert.deepEqual(s.failures, []);
    assert.deepEqual(s.out.log, []);
  });

  test('a socket closed during a page read: the page is not sent, and no other is read', async () => {
    const s = setup();
    const done = s.seams.resume('subscribe', { kind: 'update', taskId: 't1' }, c(5));
    assert.equal(s.live('update', 't1', 9), true);
    s.socket.open = false;
    s.history.read(1).answer.resolve(page([u('t1', 6)], 6, true));
    await finished(done, s.history);
    assert.deepEqual(s.out.log, []);
    assert.equal(s.history.reads.length, 1);
  });

  test('a socket closed while waiting for room: no further page is read', async () => {
    const s = setup();
    s.out.room = deferred();
    const done = s.seams.resume('subscribe', { kind: 'update', taskId: 't1' }, c(5));
    s.history.read(1).answer.resolve(page([u('t1', 6)], 6, true));
    await turn();
    s.socket.open = false;
    s.out.room.resolve(); // as Outbound.stop() does
    await finished(done, s.history);
    assert.deepEqual(s.out.log, [`replay ${text('update', 't1', 6)}`, `roomFor ${PAGE_ROOM}`]);
    assert.equal(s.history.reads.length, 1);
  });

  test('the next page is read only once roomFor reports room', async () => {
    const s = setup({ pageRoom: 123 });
    s.out.room = deferred();
    const done = s.seams.resume('subscribe', { kind: 'update', taskId: 't1' }, c(5));
    s.history.read(1).answer.resolve(page([u('t1', 6)], 6, true));
    await turn();
    await turn();
    assert.deepEqual(s.out.log, [`replay ${text('update', 't1', 6)}`, 'roomFor 123']);
    assert.equal(s.history.reads.length, 1, 'no read while the client has not taken the page');
    s.out.room.resolve();
    await turn();
    assert.deepEqual([s.history.read(2).after, s.history.read(2).first], [c(6), false]);
    s.history.read(2).answer.resolve(page([u('t1', 7)], 7, false));
    await finished(done, s.history);
    assert.equal(s.out.log.at(-1), `replay ${text('update', 't1', 7)}`);
  });

  test('forget() ends a finished seam', async () => {
    const s = setup();
    await resumeTask(s, 't1', 5, [u('t1', 6), u('t1', 8)], 8);
    assert.equal(s.live('update', 't1', 7), true);
    s.seams.forget('u:t1');
    assert.equal(s.live('update', 't1', 7), false, 'a later subscription does not find the old floor');
  });

  test('forget() stops a replaying seam: nothing of it is sent afterwards, and its page reads stop', async () => {
    const s = setup();
    const done = s.seams.resume('subscribe', { kind: 'update', taskId: 't1' }, c(5));
    s.seams.forget('u:t1');
    assert.equal(s.live('update', 't1', 9), false, 'no longer replaying: live frames are not taken');
    s.history.read(1).answer.resolve(page([u('t1', 6)], 6, true));
    await finished(done, s.history);
    assert.deepEqual(
      s.out.log.filter((entry) => entry.startsWith('replay')),
      [],
      'the page read meanwhile is not sent',
    );
    assert.equal(s.history.reads.length, 1, 'no further page is read');
  });

  test('a stream resumed again while it replays: the first replay stops, the second one owns the seam', async () => {
    const s = setup();
    const earlier = s.seams.resume('subscribe', { kind: 'update', taskId: 't1' }, c(5));
    const later = s.seams.resume('subscribe', { kind: 'update', taskId: 't1' }, c(7));
    await turn();
    const [ofLater, ofEarlier] = [s.history.read(2), s.history.reads[0]!];
    ofEarlier.answer.resolve(page([u('t1', 6), u('t1', 8)], 8, false));
    ofLater.answer.resolve(page([u('t1', 8)], 8, false));
    await finished(earlier, s.history);
    await finished(later, s.history);
    assert.deepEqual(s.out.log, [`replay ${text('update', 't1', 8)}`]);
    assert.equal(s.live('update', 't1', 8), true, 'the second seam holds: a repeat is taken');
  });
});
