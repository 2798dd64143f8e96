/**
 * The load generator, one process per run:
 * `bench/load.ts <peer> <workload> <port> <tasks.json> <scale> [<publish port>]`.
 * Opens bare WebSocket clients (bench/wire.ts) on `port`, subscribes them, asks the server on
 * `publish port` (by default the same one) to publish, and prints one JSON line of results.
 */
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import pLimit from 'p-limit';
import type { BenchTask, PeerName } from './peers.js';
import type { PublishPlan } from './server.js';
import { quantile } from './stats.js';
import { connect, type WireClient } from './wire.js';

export type Workload = 'W1' | 'W2' | 'W3' | 'W5' | 'W6' | 'R1' | 'W8';

const [peer, workload, portText, tasksFile, scaleText, publishPortText] = process.argv.slice(2) as [
  PeerName,
  Workload,
  string,
  string,
  string?,
  string?,
];
const port = Number(portText);
const publishPort = Number(publishPortText ?? portText);
const scale = Number(scaleText ?? 1);
const tasks = JSON.parse(readFileSync(tasksFile, 'utf8')) as BenchTask[];
const SUBSCRIBE_PATH = '/api/v1/mesh/tasks/subscribe';
const IO_PATH = '/socket.io/?EIO=4&transport=websocket';
const isIo = peer === 'socketio';

const n = (value: number) => Math.max(1, Math.round(value * scale));
const wallClock = () => performance.timeOrigin + performance.now();

/** One client; resolves once it can subscribe (Socket.IO needs its namespace handshake first). */
async function client(principal: string): Promise<WireClient> {
  if (!isIo) return connect(port, SUBSCRIBE_PATH, { 'x-bench-owner': principal });
  let joined!: () => void;
  const namespaceJoined = new Promise<void>((resolve) => (joined = resolve));
  // engine.io: "0{...}" opens, our "40" is answered "40{...}"; its pings ("2") want a "3".
  const c = await connect(port, IO_PATH, {}, (payload, self) => {
    if (payload[0] === 0x30 && payload[1] === 0x7b) self.send('40');
    else if (payload[0] === 0x34 && payload[1] === 0x30) joined();
  });
  await namespaceJoined;
  c.onText = (payload) => {
    if (payload.length === 1 && payload[0] === 0x32) c.send('3');
  };
  return c;
}

function subscribeFrame(type: string, taskId?: string): string {
  if (isIo) return taskId ? `42${JSON.stringify([type, { taskId }])}` : `42${JSON.stringify([type])}`;
  return JSON.stringify(taskId ? { type, taskId } : { type });
}

/**
 * Handshakes in flight at most: below the listen backlog of every server measured (511, Node's
 * default; somaxconn is higher here), so that a storm of connects is timed as such, not as the
 * SYN retries (1 s, 3 s…) of a full accept queue.
 */
const IN_FLIGHT = 500;

/** Opens `count` clients, IN_FLIGHT handshakes at a time; `opened` runs for each as soon as it can subscribe. */
async function openAll(
  count: number,
  principal: (i: number) => string,
  opened?: (c: WireClient, i: number) => void,
): Promise<WireClient[]> {
  const limit = pLimit(IN_FLIGHT);
  return Promise.all(
    Array.from({ length: count }, (_, i) =>
      limit(async () => {
        const c = await client(principal(i));
        opened?.(c, i);
        return c;
      }),
    ),
  );
}

/** Sends each client its subscribe frame and resolves once every client has its ack. */
async function subscribeAll(clients: WireClient[], frame: (i: number) => string): Promise<number> {
  const before = clients.map((c) => c.frames);
  const started = performance.now();
  clients.forEach((c, i) => c.send(frame(i)));
  await until(() => clients.every((c, i) => c.frames > before[i]!), 120_000);
  return performance.now() - started;
}

async function until(done: () => boolean, timeoutMs: number, everyMs = 2): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  while (!done()) {
    if (performance.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  return true;
}

/**
 * The server process's user and system CPU so far, in clock ticks (10 ms; NaN where /proc does not
 * tell). NaN too where BENCH_SERVER_PID is not the one server that does the work: a cluster's
 * primary (mesh-wN), or W6's two servers.
 */
function serverTicks(): number[] {
  if (Number(process.env.BENCH_WORKERS ?? 0) > 0 || workload === 'W6') return [NaN, NaN];
  try {
    const fields = readFileSync(`/proc/${process.env.BENCH_SERVER_PID}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return [Number(fields[11]), Number(fields[12])];
  } catch {
    return [NaN, NaN];
  }
}

/** The server's CPU so far (user + system), in ms: over a storm, steadier than its time on this shared machine. */
const serverCpuMs = (): number => serverTicks().reduce((sum, t) => sum + t * 10, 0);

/** The server process's open files, its sockets among them (NaN where /proc does not tell). */
function openFiles(): number {
  try {
    return readdirSync(`/proc/${process.env.BENCH_SERVER_PID}/fd`).length;
  } catch {
    return NaN;
  }
}

/**
 * Resets every client's connection (RST: no TIME_WAIT left on this side to hold ports) and waits
 * until the server has closed its side, its open files back near `idle`: the next storm then
 * meets a server done with the last one's sockets, and neither process nears its 20,000 files.
 */
async function dropAll(clients: WireClient[], idle: number): Promise<boolean> {
  for (const c of clients) c.socket.resetAndDestroy();
  return until(() => !(openFiles() > idle + 20), 60_000, 50);
}

/**
 * A reconnect storm: `count` new clients (client i as task i's owner) connect, IN_FLIGHT at a
 * time, and each sends `frame(i)` as soon as it can, as a reconnecting client resubscribes at
 * once; timed from the first connect until every client has `expected` frames more.
 */
async function reconnect(count: number, frame: (i: number) => string, expected: number, watch?: (c: WireClient, i: number) => void) {
  const bases: number[] = [];
  const cpuBefore = serverCpuMs();
  const started = performance.now();
  const clients = await openAll(
    count,
    (i) => tasks[i]!.ownerId,
    (c, i) => {
      bases[i] = c.frames;
      watch?.(c, i);
      c.send(frame(i));
    },
  );
  // Generous: this is a bound for a server that fails, not a target (a resume storm can take
  // minutes where each replay scans a ring of every task's events).
  const complete = await until(() => clients.every((c, i) => c.frames >= bases[i]! + expected), 600_000, 10);
  const ms = performance.now() - started;
  return { ms, cpuMs: serverCpuMs() - cpuBefore, clients, complete };
}

/**
 * With BENCH_PROFILE set, the server's CPU profile of `phase` (bench/server.ts writes it to
 * <BENCH_PROFILE>.<phase>); otherwise just `phase`.
 */
async function profiled<T>(name: string, phase: () => Promise<T>): Promise<T> {
  if (!process.env.BENCH_PROFILE) return phase();
  await fetch(`http://127.0.0.1:${port}/bench/profile/start`, { method: 'POST' });
  try {
    return await phase();
  } finally {
    await fetch(`http://127.0.0.1:${port}/bench/profile/stop`, { method: 'POST', body: name });
  }
}

/** A cluster's spread of connections: each worker's pid and open WebSocket connections. */
async function spread(): Promise<{ pid: number; connections: number | null }[]> {
  return (await fetch(`http://127.0.0.1:${port}/bench/workers`)).json() as Promise<{ pid: number; connections: number | null }[]>;
}

async function publish(plan: PublishPlan): Promise<void> {
  const res = await fetch(`http://127.0.0.1:${publishPort}/bench/publish`, { method: 'POST', body: JSON.stringify(plan) });
  if (res.status !== 202) throw new Error(`publish refused: ${res.status}`);
}

async function memory(): Promise<{ rss: number; heapUsed: number }> {
  return (await fetch(`http://127.0.0.1:${port}/bench/memory`)).json() as Promise<{ rss: number; heapUsed: number }>;
}

/** Measured rounds per workload (BENCH_ROUNDS); the median is reported (this machine varies by ±25 % run to run). */
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
if (!Number.isInteger(ROUNDS) || ROUNDS < 1) throw new Error('BENCH_ROUNDS takes a whole number ≥ 1');

/**
 * A first, unmeasured round of a fifth of the job, so that every peer's hot path is compiled
 * before the clock runs; then ROUNDS measured rounds, of which the median by time is returned.
 */
async function measure(clients: WireClient[], plan: PublishPlan, perEvent: number) {
  const warm = Math.ceil(plan.count / 5);
  const warmUp = await deliver(clients, { ...plan, count: warm, measured: false }, warm * perEvent);
  if (!warmUp.complete) throw new Error('the warm-up round did not complete');
  const rounds = [];
  for (let i = 0; i < ROUNDS; i++) rounds.push(await deliver(clients, { ...plan, measured: true }, plan.count * perEvent));
  rounds.sort((a, b) => a.elapsed - b.elapsed);
  return { ...rounds[Math.floor(ROUNDS / 2)]!, complete: rounds.every((r) => r.complete) };
}

/** Publishes and waits for `expected` frames across `clients`; returns elapsed ms and what arrived. */
async function deliver(clients: WireClient[], plan: PublishPlan, expected: number) {
  const base = clients.reduce((s, c) => s + c.frames, 0);
  const baseBytes = clients.reduce((s, c) => s + c.bytes, 0);
  const baseReads = clients.reduce((s, c) => s + c.reads, 0);
  const count = () => clients.reduce((s, c) => s + c.frames, 0) - base;
  const started = performance.now();
  const cpu = process.cpuUsage();
  const serverCpu = serverTicks();
  await publish(plan);
  const complete = await until(() => count() >= expected, 120_000);
  const elapsed = performance.now() - started;
  const { user, system } = process.cpuUsage(cpu);
  // The generator's own CPU over the round: near `elapsed`, it (not the server) set the pace.
  const generatorCpuMs = (user + system) / 1000;
  const generatorSystemMs = system / 1000;
  const [serverUser, serverSystem] = serverTicks().map((t, k) => (t - serverCpu[k]!) * 10);
  return {
    elapsed,
    frames: count(),
    bytes: clients.reduce((s, c) => s + c.bytes, 0) - baseBytes,
    complete,
    generatorCpuMs,
    generatorSystemMs,
    serverCpuMs: serverUser! + serverSystem!,
    serverSystemMs: serverSystem,
    reads: clients.reduce((s, c) => s + c.reads, 0) - baseReads,
  };
}

/**
 * Publish-to-receive latency of updates published at `plan.rate`: each event carries the time it
 * was due in `updatedBy`. As in `measure`: a warm-up, then ROUNDS rounds; the round with the
 * median p99 is returned.
 */
async function latency(clients: WireClient[], plan: PublishPlan) {
  const latencies: number[] = [];
  const marker = Buffer.from('"updatedBy":"');
  for (const c of clients) {
    c.onText = (payload) => {
      const at = payload.indexOf(marker);
      if (at === -1) {
        if (isIo && payload.length === 1 && payload[0] === 0x32) c.send('3');
        return;
      }
      const start = at + marker.length;
      latencies.push(wallClock() - Number(payload.subarray(start, payload.indexOf(0x22, start)).toString()));
    };
  }
  const rounds = [];
  for (let i = 0; i <= ROUNDS; i++) {
    latencies.length = 0;
    const count = i === 0 ? Math.ceil(plan.count / 5) : plan.count;
    const r = await deliver(clients, { ...plan, count, measured: i > 0 }, clients.length * count);
    latencies.sort((a, b) => a - b);
    const at = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? NaN;
    if (i > 0) rounds.push({ complete: r.complete, frames: r.frames, p50: at(0.5), p99: at(0.99), max: at(1) });
  }
  rounds.sort((a, b) => a.p99 - b.p99);
  return { ...rounds[Math.floor(ROUNDS / 2)]!, complete: rounds.every((x) => x.complete) };
}

/**
 * The watcher (bench/poll.ts) of the server process BENCH_SERVER_PID, in a process of its own:
 * `/healthz` and VmRSS every `interval` ms until `stop`, which returns its samples.
 */
async function watch(interval: number) {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      'bench/poll.ts',
      String(port),
      process.env.BENCH_SERVER_PID!,
      String(interval),
      ...(process.env.BENCH_POSTMASTER_PID ? [process.env.BENCH_POSTMASTER_PID] : []),
    ],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  let out = '';
  child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
  await until(() => out.includes('ready\n'), 30_000);
  return async () => {
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
    return JSON.parse(out.trim().split('\n').pop()!) as {
      rss: [number, number, number, number, number][];
      healthz: [number, number, number][];
      unanswered: number;
      hwm: number;
    };
  };
}

/** W8: one client's reading of a transcript: ms from the request to its first and last event (NaN: not yet). */
interface Reading {
  ack: number;
  first: number;
  last: number;
  /** Events of the transcript received so far, each the one after the last. */
  received: number;
  /** A frame that is not the next event (or not the ack): the reading is void. */
  failed: boolean;
}

/** W8: the first frames or answers that failed a reading. */
const oddFrames: string[] = [];
const noteOdd = (what: string) => void (oddFrames.length < 10 && oddFrames.push(what.slice(0, 200)));
const CONTENT = Buffer.from('"content":"');
const CURSOR = Buffer.from('"cursor":"');
/** Output g's content begins with g in 5 digits (bench/run.ts, seedTranscripts). */
const sequenceAt = (payload: Buffer, at: number) => Number(payload.subarray(at + CONTENT.length, at + CONTENT.length + 5).toString());

/**
 * Reads one task's transcript on `c` after a `subscribeOutput` with `"since":"start"` sent at
 * `sent()`: the ack, then outputs 1..events in order, each a `taskOutput` frame of that task with
 * its cursor. Anything else (a `historyTruncated` included: no event of these tasks was pruned, and
 * exactly maxReplay are retained) fails the reading. Frames after the last are live: counted only.
 */
function readTranscript(c: WireClient, taskId: string, events: number, sent: () => number): Reading {
  const reading: Reading = { ack: NaN, first: NaN, last: NaN, received: 0, failed: false };
  const head = Buffer.from(`{"type":"taskOutput","taskId":"${taskId}",`);
  c.onText = (payload) => {
    if (reading.failed || reading.received >= events) return;
    if (Number.isNaN(reading.ack)) {
      if (payload.includes('"outputSubscribed"')) reading.ack = performance.now() - sent();
      else {
        reading.failed = true;
        noteOdd(payload.toString());
      }
      return;
    }
    const at = payload.indexOf(CONTENT);
    const ok =
      at !== -1 &&
      payload.subarray(0, head.length).equals(head) &&
      payload.includes(CURSOR) &&
      sequenceAt(payload, at) === reading.received + 1;
    if (!ok) {
      reading.failed = true;
      noteOdd(payload.toString());
      return;
    }
    reading.received++;
    if (reading.received === 1) reading.first = performance.now() - sent();
    if (reading.received === events) reading.last = performance.now() - sent();
  };
  return reading;
}

const transcriptAgent = new http.Agent({ keepAlive: true });

/** One GET of the bench server's mesh routes as `principal`: status and body. */
function get(path: string, principal: string): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const request = http.get(
      { host: '127.0.0.1', port, path, agent: transcriptAgent, headers: { 'x-bench-owner': principal } },
      (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks) }));
        response.on('error', reject);
      },
    );
    request.on('error', reject);
  });
}

/** The route is not there (a Fastify 404 without the history's `code`), as opposed to its answer. */
class NoHistoryRoute extends Error {}

/**
 * Reads one task's transcript over `GET …/mesh/tasks/{id}/output?limit=500`, following `cursor`
 * while `more`, with the same checks as readTranscript. Items are not parsed as JSON one by one
 * (the WebSocket reader does not parse its frames either): each page's `items` array is cut out,
 * its events checked by scanning, and the rest of the body parsed. Cutting at the first `]` after
 * `"items":[` is sound here because no seeded frame holds a `]`.
 */
async function fetchTranscript(task: BenchTask, events: number): Promise<Reading & { pages: number }> {
  const started = performance.now();
  const reading = { ack: NaN, first: NaN, last: NaN, received: 0, failed: false, pages: 0 };
  const head = Buffer.from(`{"type":"taskOutput","taskId":"${task.taskId}",`);
  let after: string | undefined;
  for (;;) {
    const query = `limit=500${after === undefined ? '' : `&after=${encodeURIComponent(after)}`}`;
    const { status, body } = await get(`/api/v1/mesh/tasks/${task.taskId}/output?${query}`, task.ownerId);
    reading.pages++;
    if (status === 404 && !body.includes('"code"')) throw new NoHistoryRoute();
    const open = body.indexOf('"items":[');
    const close = open === -1 ? -1 : body.indexOf(']', open);
    if (status !== 200 || close === -1) {
      reading.failed = true;
      noteOdd(`${status} ${body.toString()}`);
      return reading;
    }
    const rest = JSON.parse(`${body.subarray(0, open + 9).toString()}${body.subarray(close).toString()}`) as {
      cursor?: unknown;
      more?: unknown;
      truncated?: unknown;
    };
    const items = body.subarray(open + 9, close);
    for (let at = items.indexOf(CONTENT); at !== -1; at = items.indexOf(CONTENT, at + 1)) {
      const start = items.lastIndexOf('{"type":', at);
      const end = items.indexOf(CURSOR, at);
      if (
        start === -1 ||
        end === -1 ||
        !items.subarray(start, start + head.length).equals(head) ||
        sequenceAt(items, at) !== reading.received + 1
      ) {
        reading.failed = true;
        noteOdd(items.subarray(Math.max(0, at - 100), at + 100).toString());
        return reading;
      }
      reading.received++;
    }
    if (reading.pages === 1) reading.first = performance.now() - started;
    if (typeof rest.cursor !== 'string' || typeof rest.more !== 'boolean' || (after === undefined && rest.truncated !== false)) {
      reading.failed = true;
      noteOdd(JSON.stringify(rest));
      return reading;
    }
    if (!rest.more) break;
    after = rest.cursor;
  }
  if (reading.received === events) reading.last = performance.now() - started;
  else {
    reading.failed = true;
    noteOdd(`REST: ${reading.received} of ${events} events`);
  }
  return reading;
}

/** Resets the server's VmHWM to its current RSS (Linux: `5` in clear_refs), so that a peak is this phase's own. */
function resetPeak(): boolean {
  try {
    writeFileSync(`/proc/${process.env.BENCH_SERVER_PID}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

const result: Record<string, unknown> = { peer, workload };

const VERSION = Buffer.from('"version":');
/** An update frame's version (NaN: none). */
function versionOf(payload: Buffer): number {
  const at = payload.indexOf(VERSION);
  return at === -1 ? NaN : Number.parseInt(payload.subarray(at + VERSION.length, at + VERSION.length + 16).toString(), 10);
}
/** An event frame's cursor ('' : none). */
function cursorOf(payload: Buffer): string {
  const at = payload.indexOf(CURSOR);
  return at === -1 ? '' : payload.subarray(at + CURSOR.length, payload.indexOf(0x22, at + CURSOR.length)).toString();
}

if (workload === 'W1') {
  const clients = await openAll(n(2000), () => 'admin');
  await subscribeAll(clients, () => subscribeFrame('subscribeAll'));
  if (process.env.BENCH_WORKERS) result.perWorker = await spread();
  const events = n(500);
  const plan: PublishPlan = { kind: 'update', tasks: tasks.slice(0, events), count: events, perTick: events };
  const r = await measure(clients, plan, clients.length);
  Object.assign(result, { clients: clients.length, events, ...r, perSecond: (r.frames / r.elapsed) * 1000 });
} else if (workload === 'W2') {
  // W2 and W4: 10,000 clients each on its own task; the connect storm, the subscribe storm,
  // memory, targeted updates; then reconnect storms (below).
  const idleFiles = openFiles();
  const before = await memory();
  const count = Math.min(n(10_000), tasks.length);
  const connectStarted = performance.now();
  const connectCpu = serverCpuMs();
  const clients = await profiled('connect', () => openAll(count, (i) => tasks[i]!.ownerId));
  const connectMs = performance.now() - connectStarted;
  const stormCpu = serverCpuMs();
  const storm = await profiled('subscribe', () => subscribeAll(clients, (i) => subscribeFrame('subscribe', tasks[i]!.taskId)));
  const stormCpuMs = serverCpuMs() - stormCpu;
  const after = await memory();
  Object.assign(result, {
    clients: count,
    connectMs,
    connectCpuMs: stormCpu - connectCpu,
    stormMs: storm,
    stormCpuMs,
    rssPerConnection: (after.rss - before.rss) / count,
    heapPerConnection: (after.heapUsed - before.heapUsed) / count,
  });
  const events = n(20_000);
  const plan: PublishPlan = { kind: 'update', tasks: tasks.slice(0, count), count: events, perTick: 1000 };
  const r = await measure(clients, plan, 1);
  Object.assign(result, { events, ...r, perSecond: (r.frames / r.elapsed) * 1000 });

  // The reconnect storm: every client gone at once, then back, each resubscribing at once.
  let dropped = await dropAll(clients, idleFiles);
  const plain = await profiled('reconnect', () => reconnect(count, (i) => subscribeFrame('subscribe', tasks[i]!.taskId), 1));
  Object.assign(result, { reconnectMs: plain.complete ? plain.ms : NaN, reconnectCpuMs: plain.cpuMs, reconnectComplete: plain.complete });
  dropped = (await dropAll(plain.clients, idleFiles)) && dropped;

  // The same storm where each subscribe resumes (bench/run.ts sets BENCH_RESUMED_EVENTS for the
  // peers that can): before it, each task had one event its client saw (the client's `since` is
  // that event's cursor, as after a dropped connection), then `replayed` more that it missed, all
  // on the memory bus, interleaved as busy tasks publish (event i to task i % count, version i + 1).
  // An admin socket on subscribeAll reads the cursors. Each client checks what it gets: the ack,
  // then exactly its task's missed events, in order; timed until every client has them all.
  if (process.env.BENCH_RESUMED_EVENTS) {
    const replayed = Number(process.env.BENCH_RESUMED_EVENTS);
    const observer = await client('admin');
    observer.send(subscribeFrame('subscribeAll'));
    await until(() => observer.frames >= 1, 30_000);
    const cursors: string[] = [];
    observer.onText = (payload) => {
      const version = versionOf(payload);
      if (version <= count) cursors[version - 1] = cursorOf(payload);
    };
    const seen = observer.frames;
    await publish({ kind: 'update', tasks: tasks.slice(0, count), count: (replayed + 1) * count, perTick: 1000 });
    const published = await until(() => observer.frames >= seen + (replayed + 1) * count, 120_000);
    observer.socket.resetAndDestroy();
    const odd: string[] = [];
    const resume = await profiled('resume', () =>
      reconnect(
        count,
        (i) => JSON.stringify({ type: 'subscribe', taskId: tasks[i]!.taskId, since: cursors[i] }),
        replayed + 1,
        (c, i) => {
          const own = Buffer.from(`"taskId":"${tasks[i]!.taskId}"`);
          let received = 0;
          c.onText = (payload) => {
            // Frame 0 is the ack; frame k the k-th missed event of task i, version i + 1 + k·count.
            const ok =
              received === 0
                ? payload.includes('"subscribed"')
                : received <= replayed &&
                  payload.includes('"taskUpdated"') &&
                  payload.includes(own) &&
                  versionOf(payload) === i + 1 + received * count;
            if (!ok && odd.length < 10) odd.push(payload.toString().slice(0, 200));
            received++;
          };
        },
      ),
    );
    const complete = published && resume.complete && odd.length === 0 && cursors.filter(Boolean).length === count;
    Object.assign(result, {
      resumedEvents: replayed,
      resumeMs: complete ? resume.ms : NaN,
      resumeCpuMs: resume.cpuMs,
      resumeComplete: complete,
      // Where it failed: clients that got all they should, cursors read, frames that were not the next.
      resumeClientsDone: resume.clients.filter((c) => c.frames >= replayed + 1).length,
      resumeCursors: cursors.filter(Boolean).length,
      resumeOdd: odd.slice(0, 3),
    });
    dropped = (await dropAll(resume.clients, idleFiles)) && dropped;
  }
  result.dropped = dropped;
} else if (workload === 'W3') {
  const followed = tasks.slice(0, 20);
  const clients = await openAll(n(200), () => 'admin');
  await subscribeAll(clients, (i) => subscribeFrame('subscribeOutput', followed[i % followed.length]!.taskId));
  const events = n(10_000);
  // Publishers of output write in bursts (an agent's transcript arrives many chunks per loop turn).
  const plan: PublishPlan = { kind: 'output', tasks: followed, count: events, perTick: 200, size: 1024 };
  const r = await measure(clients, plan, clients.length / followed.length);
  Object.assign(result, { clients: clients.length, events, ...r, mibPerSecond: r.bytes / 1024 / 1024 / (r.elapsed / 1000) });
} else if (workload === 'W5') {
  const clients = await openAll(n(1000), () => 'admin');
  await subscribeAll(clients, () => subscribeFrame('subscribeAll'));
  if (process.env.BENCH_WORKERS) result.perWorker = await spread();
  const events = 500;
  const r = await latency(clients, { kind: 'update', tasks: tasks.slice(0, 10), count: events, perTick: 1, rate: 100 });
  Object.assign(result, { clients: clients.length, events, ...r });
} else if (workload === 'W6') {
  // Through PostgreSQL: published on A (publishPort), delivered to clients on B (port). Few
  // clients, so that B's fan-out stays small next to the bus.
  const clients = await openAll(n(10), () => 'admin');
  await subscribeAll(clients, () => subscribeFrame('subscribeAll'));
  const events = n(10_000);
  const plan: PublishPlan = { kind: 'update', tasks: tasks.slice(0, 1000), count: events, perTick: 100 };
  const throughput = await measure(clients, plan, clients.length);
  const lat = await latency(clients, { ...plan, count: 1000, perTick: 1, rate: 200 });
  Object.assign(result, {
    clients: clients.length,
    events,
    elapsed: throughput.elapsed,
    perSecond: (throughput.frames / clients.length / throughput.elapsed) * 1000,
    rate: 200,
    ...lat,
    complete: throughput.complete && lat.complete,
  });
} else if (workload === 'R1') {
  // 200 clients, each resuming its own task's 10,000 logged updates (bench/run.ts seeded them, all
  // after BENCH_REPLAY_SINCE), all sent at once; every client reads as fast as it can. Meanwhile a
  // watcher process times GET /healthz and samples the server's RSS every 50 ms.
  const since = process.env.BENCH_REPLAY_SINCE!;
  const count = Number(process.env.BENCH_REPLAY_TASKS);
  const events = Number(process.env.BENCH_REPLAY_EVENTS);
  const resumed = tasks.slice(0, count);
  const clients = await openAll(count, (i) => resumed[i]!.ownerId);
  // Each client checks what it gets: the ack, then versions 1..events of its task in order, then live.
  const marker = Buffer.from('"version":');
  const versions = clients.map(() => 0);
  const doneAt = clients.map(() => NaN);
  const odd: string[] = [];
  let started = 0;
  clients.forEach((c, i) => {
    let acked = false;
    c.onText = (payload) => {
      if (!acked) {
        acked = true;
        if (!payload.includes('"subscribed"')) odd.push(payload.toString().slice(0, 200));
        return;
      }
      if (versions[i]! >= events) return; // live, after the replay: counted by frames
      const at = payload.indexOf(marker);
      const version = at === -1 ? NaN : Number.parseInt(payload.subarray(at + marker.length, at + marker.length + 12).toString(), 10);
      if (version !== versions[i]! + 1 || !payload.includes('"taskUpdated"')) {
        if (odd.length < 10) odd.push(payload.toString().slice(0, 200));
        versions[i] = events; // stop checking this client; it will not count as complete
        doneAt[i] = -1;
        return;
      }
      versions[i] = version;
      if (version === events) doneAt[i] = performance.now() - started;
    };
  });
  const stop = await watch(50);
  // A second of the idle server first: the baseline of RSS and /healthz.
  await new Promise((r) => setTimeout(r, 1000));
  const replayStart = wallClock();
  started = performance.now();
  clients.forEach((c, i) => c.send(JSON.stringify({ type: 'subscribe', taskId: resumed[i]!.taskId, since })));
  const replayed = await until(() => doneAt.every((t) => !Number.isNaN(t)) || clients.some((c) => c.closed), 600_000);
  const replayedMs = performance.now() - started;
  const replayEnd = wallClock();
  // Then one live update per task: time until every client has it.
  const liveBase = clients.map((c) => c.frames);
  const liveStarted = performance.now();
  await publish({ kind: 'update', tasks: resumed, count: count, perTick: count });
  const live = await until(() => clients.every((c, i) => c.frames > liveBase[i]!), 60_000);
  const liveMs = performance.now() - liveStarted;
  await new Promise((r) => setTimeout(r, 500));
  const samples = await stop();
  const during = (at: number) => at >= replayStart && at <= replayEnd;
  const before = samples.rss.filter(([at]) => at < replayStart).map(([, v]) => v);
  const rssDuring = samples.rss.filter(([at]) => during(at)).map(([, v]) => v);
  const health = samples.healthz.filter(([at]) => during(at));
  const healthMs = health.map(([, ms]) => ms).sort((a, b) => a - b);
  const healthBefore = samples.healthz
    .filter(([at]) => at < replayStart)
    .map(([, ms]) => ms)
    .sort((a, b) => a - b);
  const finished = doneAt.filter((t) => t >= 0).sort((a, b) => a - b);
  // CPU over the replay, in cores: the server process's own, and the whole machine's (PostgreSQL,
  // this generator, and whatever else runs on it).
  const window = samples.rss.filter(([at]) => during(at));
  const span = window.length > 1 ? window.at(-1)![0] - window[0]![0] : NaN;
  const cores = (k: 2 | 3) => (window.length > 1 ? (window.at(-1)![k] - window[0]![k]) / span : NaN);
  Object.assign(result, {
    clients: count,
    eventsPerClient: events,
    replayedMs,
    liveMs,
    perSecond: (finished.length * events * 1000) / replayedMs,
    clientDoneP50Ms: quantile(finished, 0.5),
    clientDoneMinMs: finished[0],
    rssBefore: before.at(-1),
    rssPeak: Math.max(...rssDuring, ...samples.rss.filter(([at]) => at > replayEnd).map(([, v]) => v)),
    rssAfter: samples.rss.at(-1)?.[1],
    rssHwm: samples.hwm,
    serverCores: cores(2),
    machineCores: cores(3),
    healthzSamples: health.length,
    healthzFailed: health.filter(([, , status]) => status !== 200).length + samples.unanswered,
    healthzP50: quantile(healthMs, 0.5),
    healthzP99: quantile(healthMs, 0.99),
    healthzMax: healthMs.at(-1),
    healthzIdleP50: quantile(healthBefore, 0.5),
    healthzIdleP99: quantile(healthBefore, 0.99),
    clientsClosed: clients.filter((c) => c.closed).length,
    odd: odd.slice(0, 3),
    complete: replayed && live && finished.length === count && odd.length === 0,
  });
} else if (workload === 'W8') {
  // Open a transcript: tasks with `events` logged outputs each (bench/run.ts, seedTranscripts).
  const first = Number(process.env.BENCH_TRANSCRIPT_FIRST);
  const transcripts = tasks.slice(first, first + Number(process.env.BENCH_TRANSCRIPT_TASKS));
  const events = Number(process.env.BENCH_TRANSCRIPT_EVENTS);
  const clientCount = Number(process.env.BENCH_TRANSCRIPT_CLIENTS);
  const opens = Number(process.env.BENCH_TRANSCRIPT_OPENS);
  const openFrame = (task: BenchTask) => JSON.stringify({ type: 'subscribeOutput', taskId: task.taskId, since: 'start' });
  const settled = (r: Reading) => r.failed || !Number.isNaN(r.last);
  let rest = true;

  // 1. One open at a time, each on a new connection as its owner, each followed by the same
  // history over REST (same task, same minute). A few unmeasured opens first warm both paths.
  const WARM_UP = 5;
  const ws: Reading[] = [];
  const rs: Reading[] = [];
  for (let i = 0; i < WARM_UP + opens; i++) {
    const task = transcripts[i % transcripts.length]!;
    const c = await client(task.ownerId);
    let sent = 0;
    const reading = readTranscript(c, task.taskId, events, () => sent);
    sent = performance.now();
    c.send(openFrame(task));
    await until(() => settled(reading) || c.closed, 120_000);
    c.socket.destroy();
    if (i >= WARM_UP) ws.push(reading);
    if (rest) {
      try {
        const r = await fetchTranscript(task, events);
        if (i >= WARM_UP) rs.push(r);
      } catch (error) {
        if (!(error instanceof NoHistoryRoute)) throw error;
        rest = false;
      }
    }
  }
  const times = (readings: Reading[], key: 'ack' | 'first' | 'last') =>
    readings
      .filter((r) => !r.failed)
      .map((r) => r[key])
      .sort((a, b) => a - b);
  const summary = (prefix: string, readings: Reading[]) => {
    const firsts = times(readings, 'first');
    const lasts = times(readings, 'last');
    return {
      [`${prefix}Opens`]: readings.length,
      [`${prefix}Failed`]: readings.filter((r) => r.failed || Number.isNaN(r.last)).length,
      [`${prefix}FirstP50`]: quantile(firsts, 0.5),
      [`${prefix}FirstP99`]: quantile(firsts, 0.99),
      [`${prefix}FirstMax`]: firsts.at(-1),
      [`${prefix}LastP50`]: quantile(lasts, 0.5),
      [`${prefix}LastP99`]: quantile(lasts, 0.99),
      [`${prefix}LastMax`]: lasts.at(-1),
    };
  };
  Object.assign(result, { tasks: transcripts.length, events, restRoute: rest, ...summary('ws', ws), ...summary('rest', rs) });
  if (ws.length > 0) result.wsAckP50 = quantile(times(ws, 'ack'), 0.5);

  // 2. `clientCount` clients open at once (client i: task i % tasks), connected beforehand; the
  // watcher samples the server's RSS every 50 ms. Then one live output per task reaches every client.
  const storm = async (read: (c: WireClient | undefined, i: number) => Promise<Reading> | Reading, clients: WireClient[]) => {
    const idle = (await memory()).rss;
    const reset = resetPeak();
    const stop = await watch(50);
    await new Promise((r) => setTimeout(r, 1000));
    const startAt = wallClock();
    const started = performance.now();
    const readings = await Promise.all(Array.from({ length: clientCount }, (_, i) => read(clients[i], i)));
    const complete = await until(() => readings.every(settled) || clients.some((c) => c.closed), 600_000);
    const elapsed = performance.now() - started;
    const endAt = wallClock();
    return { readings, complete, elapsed, idle, reset, stop, startAt, endAt };
  };
  type Samples = Awaited<ReturnType<Awaited<ReturnType<typeof watch>>>>;
  const peak = (samples: Samples, from: number) => Math.max(...samples.rss.filter(([at]) => at >= from).map(([, v]) => v));
  // CPU from the first request to the last event, in cores: the server's, and the whole machine's.
  const cores = (samples: Samples, from: number, to: number) => {
    const window = samples.rss.filter(([at]) => at >= from && at <= to);
    if (window.length < 2) return { server: NaN, machine: NaN, postgres: NaN };
    const span = window.at(-1)![0] - window[0]![0];
    const used = (k: 2 | 3 | 4) => (window.at(-1)![k] - window[0]![k]) / span;
    return { server: used(2), machine: used(3), postgres: used(4) };
  };
  const stormSummary = (prefix: string, s: Awaited<ReturnType<typeof storm>>) => ({
    [`${prefix}StormMs`]: s.elapsed,
    [`${prefix}StormFailed`]: s.readings.filter((r) => r.failed || Number.isNaN(r.last)).length,
    [`${prefix}StormFirstP50`]: quantile(times(s.readings, 'first'), 0.5),
    [`${prefix}StormFirstMax`]: times(s.readings, 'first').at(-1),
    [`${prefix}StormLastP50`]: quantile(times(s.readings, 'last'), 0.5),
    [`${prefix}StormLastMin`]: times(s.readings, 'last')[0],
    [`${prefix}StormRssBefore`]: s.idle,
  });

  // Over REST first: the WebSocket storm ends with a live output per task, which the history would then hold.
  let restComplete = true;
  if (rest) {
    const restStorm = await storm((_, i) => fetchTranscript(transcripts[i % transcripts.length]!, events), []);
    const restSamples = await restStorm.stop();
    restComplete = restStorm.complete && restStorm.readings.every((r) => !r.failed);
    Object.assign(result, stormSummary('rest', restStorm), {
      restStormRssPeak: peak(restSamples, restStorm.startAt),
      restStormHwm: restStorm.reset ? restSamples.hwm : NaN,
      restStormServerCores: cores(restSamples, restStorm.startAt, restStorm.endAt).server,
      restStormMachineCores: cores(restSamples, restStorm.startAt, restStorm.endAt).machine,
      restStormPostgresCores: cores(restSamples, restStorm.startAt, restStorm.endAt).postgres,
    });
  }
  const clients = await openAll(clientCount, (i) => transcripts[i % transcripts.length]!.ownerId);
  let sentAll = 0;
  const wsStorm = await storm((c, i) => {
    const task = transcripts[i % transcripts.length]!;
    const reading = readTranscript(c!, task.taskId, events, () => sentAll);
    if (i === 0) sentAll = performance.now();
    c!.send(openFrame(task));
    return reading;
  }, clients);
  const liveBase = clients.map((c) => c.frames);
  const liveStarted = performance.now();
  await publish({ kind: 'output', tasks: transcripts, count: transcripts.length, perTick: transcripts.length, size: 500 });
  const live = await until(() => clients.every((c, i) => c.frames > liveBase[i]!), 60_000);
  const liveMs = performance.now() - liveStarted;
  const wsSamples = await wsStorm.stop();
  Object.assign(result, stormSummary('ws', wsStorm), {
    clients: clientCount,
    wsStormRssPeak: peak(wsSamples, wsStorm.startAt),
    wsStormHwm: wsStorm.reset ? wsSamples.hwm : NaN,
    wsStormServerCores: cores(wsSamples, wsStorm.startAt, wsStorm.endAt).server,
    wsStormMachineCores: cores(wsSamples, wsStorm.startAt, wsStorm.endAt).machine,
    wsStormPostgresCores: cores(wsSamples, wsStorm.startAt, wsStorm.endAt).postgres,
    liveMs,
    clientsClosed: clients.filter((c) => c.closed).length,
  });
  for (const c of clients) c.socket.destroy();

  Object.assign(result, {
    odd: oddFrames.slice(0, 3),
    complete:
      oddFrames.length === 0 &&
      wsStorm.complete &&
      live &&
      ws.every((r) => !r.failed) &&
      wsStorm.readings.every((r) => !r.failed && !Number.isNaN(r.last)) &&
      rs.every((r) => !r.failed) &&
      restComplete,
  });
}

process.stdout.write(`${JSON.stringify(result)}\n`);
process.exit(0);
