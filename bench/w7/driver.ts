/**
 * W7 (`npm run bench -- --workloads W7 [--peers mesh,socketio] [--scale 0.05]`): many sockets on
 * one machine. BENCH_W7_PARTS (default `a,b`) picks the parts, BENCH_W7_WORKERS (default 7) the
 * example server's processes in (b). `--peers` may name `ceiling` too (bare ws, for the storm and
 * memory only); the seed has no place here.
 * (a) One server process of each peer (bench/server.ts, memory bus) holds 19,000 sockets.
 * (b) The example server with WORKERS processes on one port (node:cluster, the PostgreSQL bus
 *     between them, API keys as it authenticates) holds 100,000; a bench mesh server on the same
 *     database publishes, so that every event reaches the workers through PostgreSQL.
 * Who subscribes to what: one busy owner holds 1/19 of the sockets, ten on each of its tasks, and
 * every one of them also holds its `subscribeAll`; every other owner has 100 tasks with one socket
 * each, every 20th also with `subscribeAll`. A tenth of the sockets hold a `subscribeAll` in all.
 * The sockets are opened by generator processes (bench/w7/generator.ts), at most
 * SOCKETS_PER_GENERATOR each (one process may hold 20,000 open files here), socket i by
 * generator i % count. Measured: RSS per connection, time until all are open and until all have
 * their acks, a broadcast to the busy owner (one update on one of its tasks, until every one of its
 * `subscribeAll` sockets has it; p50/p99 over BROADCASTS), and the latency of targeted updates at
 * TARGETED_RATE a second for TARGETED_SECONDS (each to a task of an owner other than the busy one:
 * its subscriber and its owner's `subscribeAll` sockets).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import postgres from 'postgres';
import { hashKey } from '../../example/src/api-keys.js';
import { freePort } from '../../example/src/embedded-postgres.js';
import type { BenchBus, BenchTask, PeerName } from '../peers.js';
import type { PublishPlan } from '../server.js';
import { quantile } from '../stats.js';
import type { W7Assignment, W7Command, W7Socket } from './generator.js';

export interface W7Context {
  url: string;
  scale: number;
  peers: PeerName[];
  scratch: string;
  startServer(peer: PeerName, bus: BenchBus, env?: Record<string, string>): Promise<{ port: number; pid: number; stop(): Promise<void> }>;
}

const SINGLE_SOCKETS = 19_000;
const CLUSTER_SOCKETS = 100_000;
/** Below the 20,000 open files one process may hold, with room for its own. */
const SOCKETS_PER_GENERATOR = 12_500;
const TASKS_PER_OWNER = 100;
/** A busy owner's sockets per task. */
const BUSY_PER_TASK = 10;
/** One API key per this many sockets: the example server's default limit per principal. */
const SOCKETS_PER_KEY = 100;
const WARM_UP_BROADCASTS = 20;
const BROADCASTS = 200;
const TARGETED_RATE = 1000;
const TARGETED_SECONDS = 10;
/** Distinct tasks the targeted updates go to, in turn (the plan travels in one request body). */
const TARGETED_TASKS = 2000;
/** Upgrades each generator keeps in flight. */
const IN_FLIGHT = 100;

const wallClock = () => performance.timeOrigin + performance.now();
const log = (line: string) => process.stderr.write(`W7 ${line}\n`);
const round = (v: number, digits = 2) => Math.round(v * 10 ** digits) / 10 ** digits;

interface Population {
  sockets: W7Socket[];
  tasks: (BenchTask & { name: string })[];
  /** One of the busy owner's tasks, and how many sockets a broadcast on it must reach. */
  broadcastTask: BenchTask;
  busySockets: number;
  /** Targeted updates' tasks, and the frames an update on each must deliver. */
  targeted: BenchTask[];
  targetedFrames: number[];
  /** API keys (example server): socket i's credential is keys[i]'s clear text. */
  keys: { hash: string; ownerId: string }[];
}

/** Who subscribes to what (the header's description), with an API key per SOCKETS_PER_KEY sockets of one owner. */
function populate(count: number, withKeys: boolean): Population {
  const busySockets = Math.max(1, Math.round(count / 19));
  const busyOwner = randomUUID();
  const tasks: Population['tasks'] = Array.from({ length: Math.ceil(busySockets / BUSY_PER_TASK) }, () => ({
    taskId: randomUUID(),
    ownerId: busyOwner,
    name: 'w7 busy',
  }));
  const sockets: W7Socket[] = [];
  const keys: Population['keys'] = [];
  let key = '';
  const credential = (ownerId: string, inGroup: number) => {
    if (!withKeys) return ownerId;
    if (inGroup % SOCKETS_PER_KEY === 0) {
      key = `mk_w7_${randomBytes(18).toString('base64url')}`;
      keys.push({ hash: hashKey(key), ownerId });
    }
    return key;
  };
  for (let j = 0; j < busySockets; j++) {
    sockets.push({ taskId: tasks[j % tasks.length]!.taskId, credential: credential(busyOwner, j), all: true, busy: true });
  }
  const allOf = new Map<string, number>();
  let owner = '';
  for (let k = 0; k < count - busySockets; k++) {
    if (k % TASKS_PER_OWNER === 0) owner = randomUUID();
    const task = { taskId: randomUUID(), ownerId: owner, name: 'w7' };
    tasks.push(task);
    const all = k % 20 === 0;
    if (all) allOf.set(owner, (allOf.get(owner) ?? 0) + 1);
    sockets.push({ taskId: task.taskId, credential: credential(owner, k % TASKS_PER_OWNER), all, busy: false });
  }
  // Every ninth of the other owners' tasks: spread over the owners, not the first few.
  const others = sockets.slice(busySockets);
  const picked = others.filter((_, k) => k % 9 === 4).slice(0, TARGETED_TASKS);
  const ownerOf = new Map(tasks.map((t) => [t.taskId, t.ownerId]));
  const targeted = picked.map((s) => ({ taskId: s.taskId, ownerId: ownerOf.get(s.taskId)! }));
  // Its own subscriber, and every subscribeAll socket of its owner (one frame to a socket holding both).
  const targetedFrames = picked.map((s) => 1 + allOf.get(ownerOf.get(s.taskId)!)! - (s.all ? 1 : 0));
  return {
    sockets,
    tasks,
    broadcastTask: { taskId: tasks[0]!.taskId, ownerId: busyOwner },
    busySockets,
    targeted,
    targetedFrames,
    keys,
  };
}

async function seed(url: string, population: Population): Promise<void> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    const CHUNK = 10_000;
    for (let i = 0; i < population.tasks.length; i += CHUNK) {
      const part = population.tasks.slice(i, i + CHUNK);
      await sql`
        INSERT INTO tasks (id, owner_id, name)
        SELECT * FROM unnest(${part.map((t) => t.taskId)}::uuid[], ${part.map((t) => t.ownerId)}::uuid[], ${part.map((t) => t.name)}::text[])`;
    }
    if (population.keys.length > 0) {
      await sql`
        INSERT INTO api_keys (key_hash, owner_id, is_admin)
        SELECT h, o, false FROM unnest(${population.keys.map((k) => k.hash)}::text[], ${population.keys.map((k) => k.ownerId)}::uuid[]) AS k(h, o)`;
    }
    await sql`ANALYZE tasks`;
  } finally {
    await sql.end();
  }
}

/** A generator process and its answers, awaited one kind at a time. */
class Generator {
  readonly child: ChildProcess;
  readonly exited: Promise<void>;
  busy = 0;
  private readonly answers: Record<string, unknown>[] = [];
  private readonly waiters: { ev: string; resolve: (answer: Record<string, unknown>) => void }[] = [];

  constructor(file: string) {
    this.child = spawn(process.execPath, ['--import', 'tsx', 'bench/w7/generator.ts', file], { stdio: ['pipe', 'pipe', 'inherit'] });
    this.exited = new Promise((resolve) => this.child.once('exit', () => resolve()));
    createInterface({ input: this.child.stdout! }).on('line', (line) => {
      const answer = JSON.parse(line) as Record<string, unknown>;
      const at = this.waiters.findIndex((w) => w.ev === answer.ev);
      if (at === -1) this.answers.push(answer);
      else this.waiters.splice(at, 1)[0]!.resolve(answer);
    });
  }

  send(command: W7Command): void {
    this.child.stdin!.write(`${JSON.stringify(command)}\n`);
  }

  /** The next answer `ev`, or undefined after `timeoutMs` (or once the process is gone). */
  next(ev: string, timeoutMs: number): Promise<Record<string, unknown> | undefined> {
    const at = this.answers.findIndex((a) => a.ev === ev);
    if (at !== -1) return Promise.resolve(this.answers.splice(at, 1)[0]);
    return new Promise((resolve) => {
      const waiter = { ev, resolve };
      this.waiters.push(waiter);
      const drop = () => {
        const i = this.waiters.indexOf(waiter);
        if (i !== -1) this.waiters.splice(i, 1);
        resolve(undefined);
      };
      setTimeout(drop, timeoutMs).unref();
      void this.exited.then(drop);
    });
  }
}

async function startGenerators(
  scratch: string,
  peer: W7Assignment['peer'],
  port: number,
  population: Population,
  sourceNet: number,
): Promise<Generator[]> {
  const count = Math.max(2, Math.ceil(population.sockets.length / SOCKETS_PER_GENERATOR));
  const generators: Generator[] = [];
  for (let g = 0; g < count; g++) {
    const assignment: W7Assignment = {
      peer,
      port,
      sourceNet: sourceNet + g,
      sockets: population.sockets.filter((_, i) => i % count === g),
    };
    const file = path.join(scratch, `w7-${peer}-${g}.json`);
    writeFileSync(file, JSON.stringify(assignment));
    generators.push(new Generator(file));
  }
  for (const g of generators) {
    const ready = await g.next('ready', 60_000);
    if (!ready) throw new Error('a W7 generator did not start');
    g.busy = Number(ready.busy);
  }
  return generators;
}

/** Resident memory of a process, from /proc (bytes). */
function vmRss(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('VmRSS:'));
  return Number(line?.split(/\s+/)[1] ?? NaN) * 1024;
}

const openFiles = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;

/** The cluster's workers: the primary's child processes named node (not its embedded PostgreSQL, which runs detached). */
function childrenOf(pid: number): number[] {
  return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
}

async function publish(port: number, plan: PublishPlan): Promise<void> {
  const res = await fetch(`http://127.0.0.1:${port}/bench/publish`, { method: 'POST', body: JSON.stringify(plan) });
  if (res.status !== 202) throw new Error(`publish refused: ${res.status}`);
}

/**
 * The measures, once the server listens: the storm of opens and subscribes, memory (`memory()`
 * before and after), the busy owner's broadcasts, then the targeted updates.
 */
async function measure(
  scratch: string,
  peer: W7Assignment['peer'],
  ports: { clients: number; publish: number },
  population: Population,
  sourceNet: number,
  memory: () => Promise<{ rss: number; detail?: unknown }>,
  /** The server's name in the log lines. */
  label: string,
  deliveries = true,
): Promise<Record<string, unknown>> {
  const result: Record<string, unknown> = { sockets: population.sockets.length, busySockets: population.busySockets };
  const generators = await startGenerators(scratch, peer, ports.clients, population, sourceNet);
  result.generators = generators.length;
  try {
    const before = await memory();
    const started = wallClock();
    for (const g of generators) g.send({ cmd: 'open', inFlight: IN_FLIGHT });
    // 100,000 upgrades took 585 s on a machine at load 20 (the example server, 7 workers): room for slower.
    const opened = await Promise.all(generators.map((g) => g.next('opened', 1_800_000)));
    if (opened.some((o) => o === undefined)) throw new Error('a generator did not finish opening');
    const sum = (key: string) => opened.reduce((s, o) => s + Number(o![key]), 0);
    const open = sum('open');
    Object.assign(result, {
      open,
      unacked: sum('unacked'),
      failures: sum('failures'),
      retries: sum('retries'),
      refusals: sum('refusals'),
      resubscribes: sum('resubscribes'),
      firstError: opened.find((o) => o!.firstError)?.firstError,
      connectMs: round(Math.max(...opened.map((o) => Number(o!.openAt))) - started, 0),
      connectSubscribeMs: round(Math.max(...opened.map((o) => Number(o!.subscribedAt))) - started, 0),
    });
    log(`${label}: ${open} of ${population.sockets.length} open, ${JSON.stringify(result)}`);
    const after = await memory();
    Object.assign(result, {
      rssBefore: before.rss,
      rssAfter: after.rss,
      rssPerConnection: round((after.rss - before.rss) / Math.max(open, 1), 0),
      memoryBefore: before.detail,
      memory: after.detail,
    });
    if (open === 0) return { ...result, complete: false };
    // The ceiling routes no subscribeAll (every event to every socket, or to a task's one socket):
    // it gives the storm and the memory of bare ws, the floor of both, and nothing else.
    if (!deliveries) return { ...result, complete: result.unacked === 0 && result.failures === 0 };

    // The busy owner's broadcasts, one at a time: from the stamp the publisher gives the update to
    // the last of its subscribeAll sockets' arrivals (each generator reports its own last).
    for (const g of generators) g.send({ cmd: 'broadcast' });
    await Promise.all(generators.map((g) => g.next('mode', 10_000)));
    const withBusy = generators.filter((g) => g.busy > 0);
    const broadcast: number[] = [];
    let lost = 0;
    for (let i = 0; i < WARM_UP_BROADCASTS + BROADCASTS && lost < 3; i++) {
      await publish(ports.publish, {
        kind: 'update',
        tasks: [population.broadcastTask],
        count: 1,
        perTick: 1,
        measured: i >= WARM_UP_BROADCASTS,
      });
      const reached = await Promise.all(withBusy.map((g) => g.next('broadcast', 30_000)));
      if (reached.some((r) => r === undefined)) {
        lost++;
        continue;
      }
      if (i < WARM_UP_BROADCASTS) continue;
      broadcast.push(Math.max(...reached.map((r) => Number(r!.last))) - Number(reached[0]!.stamp));
    }
    broadcast.sort((a, b) => a - b);
    Object.assign(result, {
      broadcasts: broadcast.length,
      broadcastLost: lost,
      broadcastP50: round(quantile(broadcast, 0.5)),
      broadcastP99: round(quantile(broadcast, 0.99)),
      broadcastMax: round(broadcast.at(-1) ?? NaN),
    });
    log(`${label}: broadcast p50 ${result.broadcastP50} ms, p99 ${result.broadcastP99} ms over ${broadcast.length}`);

    // Targeted updates at TARGETED_RATE a second, stamped with the time each was due.
    for (const g of generators) g.send({ cmd: 'targeted' });
    await Promise.all(generators.map((g) => g.next('mode', 10_000)));
    const count = TARGETED_RATE * TARGETED_SECONDS;
    // Update i goes to targeted[i % length] (bench/server.ts).
    let expected = 0;
    for (let i = 0; i < count; i++) expected += population.targetedFrames[i % population.targeted.length]!;
    const latencies: number[] = [];
    let frames = 0;
    await publish(ports.publish, { kind: 'update', tasks: population.targeted, count, perTick: 1, rate: TARGETED_RATE, measured: true });
    const deadline = performance.now() + TARGETED_SECONDS * 1000 + 60_000;
    while (frames < expected && performance.now() < deadline) {
      await new Promise((r) => setTimeout(r, 1000));
      for (const g of generators) g.send({ cmd: 'report' });
      for (const report of await Promise.all(generators.map((g) => g.next('report', 30_000)))) {
        frames += Number(report?.updates ?? 0);
        for (const v of (report?.latencies as number[] | undefined) ?? []) latencies.push(v);
      }
    }
    latencies.sort((a, b) => a - b);
    Object.assign(result, {
      targetedUpdates: count,
      targetedExpected: expected,
      targetedFrames: frames,
      targetedP50: round(quantile(latencies, 0.5)),
      targetedP99: round(quantile(latencies, 0.99)),
      targetedMax: round(latencies.at(-1) ?? NaN),
    });
    log(`${label}: targeted p50 ${result.targetedP50} ms, p99 ${result.targetedP99} ms, ${frames} of ${expected} frames`);
    for (const g of generators) g.send({ cmd: 'report' });
    const last = await Promise.all(generators.map((g) => g.next('report', 30_000)));
    result.openAtEnd = last.reduce((s, r) => s + Number(r?.open ?? 0), 0);
    result.complete =
      result.unacked === 0 &&
      result.failures === 0 &&
      result.refusals === 0 &&
      lost === 0 &&
      frames === expected &&
      result.openAtEnd === population.sockets.length;
    return result;
  } finally {
    for (const g of generators) g.send({ cmd: 'close' });
    await Promise.all(generators.map((g) => Promise.race([g.exited, new Promise((r) => setTimeout(r, 30_000))])));
    for (const g of generators) if (g.child.exitCode === null) g.child.kill('SIGKILL');
  }
}

/** (a): one server process of `peer` (memory bus); its memory after a full GC, from GET /bench/memory. */
async function single(context: W7Context, peer: PeerName, sourceNet: number): Promise<Record<string, unknown>> {
  const population = populate(Math.round(SINGLE_SOCKETS * context.scale), false);
  await seed(context.url, population);
  const server = await context.startServer(peer, 'memory');
  try {
    const memory = async () => {
      const usage = (await (await fetch(`http://127.0.0.1:${server.port}/bench/memory`)).json()) as { rss: number; heapUsed: number };
      return { rss: usage.rss, detail: { heapUsed: usage.heapUsed, vmRss: vmRss(server.pid), openFiles: openFiles(server.pid) } };
    };
    return await measure(
      context.scratch,
      peer === 'socketio' ? 'socketio' : 'mesh',
      { clients: server.port, publish: server.port },
      population,
      sourceNet,
      memory,
      peer,
      peer !== 'ceiling',
    );
  } finally {
    await server.stop();
  }
}

/**
 * (b): the example server, WORKERS processes on one port, on the bench's database; its workers'
 * RSS summed from /proc (no GC: the example has no such route). The publisher is a bench mesh
 * server on the PostgreSQL bus: every event reaches every worker through the log.
 */
async function cluster(context: W7Context, workers: number, sourceNet: number): Promise<Record<string, unknown>> {
  const population = populate(Math.round(CLUSTER_SOCKETS * context.scale), true);
  await seed(context.url, population);
  const port = await freePort();
  // BENCH_W7_EXAMPLE_FLAGS: node flags for the primary, which its workers inherit (e.g. `--cpu-prof --cpu-prof-dir=…`).
  const flags = process.env.BENCH_W7_EXAMPLE_FLAGS?.split(' ').filter(Boolean) ?? [];
  const primary = spawn(process.execPath, [...flags, '--import', 'tsx', 'example/src/main.ts'], {
    env: {
      ...process.env,
      DATABASE_URL: context.url,
      HOST: '127.0.0.1',
      PORT: String(port),
      WORKERS: String(workers),
      LOG_LEVEL: 'info',
      SHUTDOWN_DRAIN_MS: '0',
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise<void>((resolve) => primary.once('exit', () => resolve()));
  let problems = 0;
  const listening = new Promise<boolean>((resolve) => {
    createInterface({ input: primary.stdout! }).on('line', (line) => {
      let entry: { level?: number; msg?: string; workers?: number };
      try {
        entry = JSON.parse(line) as typeof entry;
      } catch {
        return;
      }
      if (entry.workers === workers && entry.msg?.includes('workers;')) resolve(true);
      // warn and above: shown (the first few), and counted.
      if ((entry.level ?? 0) >= 40 && problems++ < 5) log(`example server: ${line.slice(0, 400)}`);
    });
    void exited.then(() => resolve(false));
  });
  if (!(await listening)) throw new Error('the example server did not start');
  const publisher = await context.startServer('mesh', 'postgres');
  try {
    const pids = childrenOf(primary.pid!);
    const memory = async () => {
      const each = pids.map(vmRss);
      return {
        rss: each.reduce((a, b) => a + b, 0),
        detail: { workerRss: each, workerOpenFiles: pids.map(openFiles), primaryRss: vmRss(primary.pid!) },
      };
    };
    const result = await measure(
      context.scratch,
      'example',
      { clients: port, publish: publisher.port },
      population,
      sourceNet,
      memory,
      'example',
    );
    return { workers, ...result, serverWarnings: problems };
  } finally {
    await publisher.stop();
    primary.kill('SIGTERM');
    await exited;
  }
}

export async function runW7(context: W7Context): Promise<Map<string, Record<string, unknown>>> {
  const parts = (process.env.BENCH_W7_PARTS ?? 'a,b').split(',');
  const results = new Map<string, Record<string, unknown>>();
  // Each run's generators take their source addresses from 127.<net>.0.0/16 nets of their own, so
  // that no socket left in TIME_WAIT by the run before holds a port this one wants.
  let sourceNet = 10;
  if (parts.includes('a')) {
    for (const peer of context.peers.filter((p) => p !== 'seed')) {
      const r = await single(context, peer, sourceNet);
      sourceNet += 10;
      results.set(`W7a/${peer}`, r);
      process.stderr.write(`W7a ${peer}: ${JSON.stringify(r)}\n`);
    }
  }
  if (parts.includes('b')) {
    // 7 × ~14,300 sockets: room under 20,000 open files for an uneven share; and 7 workers' pools
    // (10 connections and a LISTEN each) and the publisher's fit the embedded PostgreSQL's 100.
    const r = await cluster(context, Number(process.env.BENCH_W7_WORKERS ?? 7), sourceNet);
    results.set('W7b/example', r);
    process.stderr.write(`W7b example: ${JSON.stringify(r)}\n`);
  }
  printTable(results);
  return results;
}

/** W7's own table: (a) per peer and mesh's ratio to Socket.IO, then (b). */
function printTable(results: Map<string, Record<string, unknown>>): void {
  const columns = [...results.keys()];
  const rows: [string, string, 'lower' | 'higher', (v: number) => string][] = [
    ['sockets open', 'open', 'higher', (v) => v.toLocaleString('en-US')],
    ['s until all open', 'connectMs', 'lower', (v) => (v / 1000).toFixed(1)],
    ['s until all subscribed', 'connectSubscribeMs', 'lower', (v) => (v / 1000).toFixed(1)],
    ['RSS KiB/conn', 'rssPerConnection', 'lower', (v) => (v / 1024).toFixed(2)],
    ['busy owner broadcast p50 ms', 'broadcastP50', 'lower', (v) => v.toFixed(2)],
    ['busy owner broadcast p99 ms', 'broadcastP99', 'lower', (v) => v.toFixed(2)],
    ['targeted 1,000/s p50 ms', 'targetedP50', 'lower', (v) => v.toFixed(2)],
    ['targeted 1,000/s p99 ms', 'targetedP99', 'lower', (v) => v.toFixed(2)],
  ];
  const ratio = results.has('W7a/mesh') && results.has('W7a/socketio');
  const header = ['W7 measure', ...columns, ...(ratio ? ['mesh vs socketio'] : [])];
  const lines = [header];
  for (const [label, key, better, format] of rows) {
    const value = (column: string) => Number(results.get(column)?.[key] ?? NaN);
    const cells = columns.map((c) => (Number.isFinite(value(c)) ? format(value(c)) : 'n/a'));
    if (ratio) {
      const [m, io] = [value('W7a/mesh'), value('W7a/socketio')];
      cells.push(Number.isFinite(m / io) && m !== 0 && io !== 0 ? `${(better === 'higher' ? m / io : io / m).toFixed(2)}×` : 'n/a');
    }
    lines.push([label, ...cells]);
  }
  lines.push(['complete', ...columns.map((c) => String(results.get(c)?.complete)), ...(ratio ? [''] : [])]);
  const widths = header.map((_, i) => Math.max(...lines.map((l) => l[i]!.length)));
  for (const [i, l] of lines.entries()) {
    process.stdout.write(`| ${l.map((c, j) => c.padEnd(widths[j]!)).join(' | ')} |\n`);
    if (i === 0) process.stdout.write(`| ${widths.map((w) => '-'.repeat(w)).join(' | ')} |\n`);
  }
  process.stdout.write('\n');
}
