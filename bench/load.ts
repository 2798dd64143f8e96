/**
 * The load generator, one process per run:
 * `bench/load.ts <peer> <workload> <port> <tasks.json> <scale> [<publish port>]`.
 * Opens bare WebSocket clients (bench/wire.ts) on `port`, subscribes them, asks the server on
 * `publish port` (by default the same one) to publish, and prints one JSON line of results.
 */
import { readFileSync } from 'node:fs';
import type { BenchTask, PeerName } from './peers.js';
import type { PublishPlan } from './server.js';
import { connect, type WireClient } from './wire.js';

export type Workload = 'W1' | 'W2' | 'W3' | 'W5' | 'W6';

const [peer, workload, portText, tasksFile, scaleText, publishPortText] = process.argv.slice(2) as [PeerName, Workload, string, string, string?, string?];
const port = Number(portText);
const publishPort = Number(publishPortText ?? portText);
const scale = Number(scaleText ?? 1);
const tasks = JSON.parse(readFileSync(tasksFile, 'utf8')) as BenchTask[];
const SUBSCRIBE_PATH = '/api/v1/mesh/tasks/subscribe';
const IO_PATH = '/socket.io/?EIO=4&transport=websocket';
const isIo = peer === 'socketio';
/** The ceiling sends every event to every socket except for W2's task subscriptions. */
const routes = peer !== 'ceiling';

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

async function openAll(count: number, principal: (i: number) => string): Promise<WireClient[]> {
  const clients: WireClient[] = [];
  const BATCH = 200;
  for (let i = 0; i < count; i += BATCH) {
    clients.push(...(await Promise.all(Array.from({ length: Math.min(BATCH, count - i) }, (_, j) => client(principal(i + j))))));
  }
  return clients;
}

/** Sends each client its subscribe frame and resolves once every client has its ack. */
async function subscribeAll(clients: WireClient[], frame: (i: number) => string): Promise<number> {
  const before = clients.map((c) => c.frames);
  const started = performance.now();
  clients.forEach((c, i) => c.send(frame(i)));
  await until(() => clients.every((c, i) => c.frames > before[i]!), 120_000);
  return performance.now() - started;
}

async function until(done: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  while (!done()) {
    if (performance.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 2));
  }
  return true;
}

async function publish(plan: PublishPlan): Promise<void> {
  const res = await fetch(`http://127.0.0.1:${publishPort}/bench/publish`, { method: 'POST', body: JSON.stringify(plan) });
  if (res.status !== 202) throw new Error(`publish refused: ${res.status}`);
}

async function memory(): Promise<{ rss: number; heapUsed: number }> {
  return (await fetch(`http://127.0.0.1:${port}/bench/memory`)).json() as Promise<{ rss: number; heapUsed: number }>;
}

/** Measured rounds per workload; the median is reported (this machine varies by ±25 % run to run). */
const ROUNDS = 3;

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
  const count = () => clients.reduce((s, c) => s + c.frames, 0) - base;
  const started = performance.now();
  await publish(plan);
  const complete = await until(() => count() >= expected, 120_000);
  const elapsed = performance.now() - started;
  return { elapsed, frames: count(), bytes: clients.reduce((s, c) => s + c.bytes, 0) - baseBytes, complete };
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

const result: Record<string, unknown> = { peer, workload };

if (workload === 'W1') {
  const clients = await openAll(n(2000), () => 'admin');
  await subscribeAll(clients, () => subscribeFrame('subscribeAll'));
  const events = n(500);
  const plan: PublishPlan = { kind: 'update', tasks: tasks.slice(0, events), count: events, perTick: events };
  const r = await measure(clients, plan, clients.length);
  Object.assign(result, { clients: clients.length, events, ...r, perSecond: (r.frames / r.elapsed) * 1000 });
} else if (workload === 'W2') {
  // W2 and W4: 10,000 clients each on its own task; the subscribe storm, memory, then targeted updates.
  const before = await memory();
  const count = Math.min(n(10_000), tasks.length);
  const clients = await openAll(count, (i) => tasks[i]!.ownerId);
  const storm = await subscribeAll(clients, (i) => subscribeFrame('subscribe', tasks[i]!.taskId));
  const after = await memory();
  Object.assign(result, {
    clients: count,
    stormMs: storm,
    rssPerConnection: (after.rss - before.rss) / count,
    heapPerConnection: (after.heapUsed - before.heapUsed) / count,
  });
  const events = n(20_000);
  const plan: PublishPlan = { kind: 'update', tasks: tasks.slice(0, count), count: events, perTick: 1000 };
  const r = await measure(clients, plan, 1);
  Object.assign(result, { events, ...r, perSecond: (r.frames / r.elapsed) * 1000 });
} else if (workload === 'W3') {
  const followed = tasks.slice(0, 20);
  const clients = await openAll(n(200), () => 'admin');
  await subscribeAll(clients, (i) => subscribeFrame('subscribeOutput', followed[i % followed.length]!.taskId));
  const events = n(10_000);
  // Publishers of output write in bursts (an agent's transcript arrives many chunks per loop turn).
  const plan: PublishPlan = { kind: 'output', tasks: followed, count: events, perTick: 200, size: 1024 };
  const perEvent = routes ? clients.length / followed.length : clients.length;
  const r = await measure(clients, plan, perEvent);
  Object.assign(result, { clients: clients.length, events, ...r, mibPerSecond: r.bytes / 1024 / 1024 / (r.elapsed / 1000) });
} else if (workload === 'W5') {
  const clients = await openAll(n(1000), () => 'admin');
  await subscribeAll(clients, () => subscribeFrame('subscribeAll'));
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
}

process.stdout.write(`${JSON.stringify(result)}\n`);
process.exit(0);
