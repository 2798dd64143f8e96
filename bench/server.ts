/**
 * One benchmark server process: `node --expose-gc --import tsx bench/server.ts <peer>` with
 * DATABASE_URL, PORT and BENCH_BUS (`memory`, the default, or `postgres`). The load generator
 * drives it over HTTP:
 * - POST /bench/publish  a plan (below): answered at once, then published;
 * - GET  /bench/memory   process.memoryUsage() after a full GC (a cluster: summed over its workers);
 * - GET  /bench/workers  each process's pid and open WebSocket connections (null: the peer does not count them);
 * - POST /bench/profile/start, then /bench/profile/stop with a phase name as body: with
 *        BENCH_PROFILE=<file>, a CPU profile of what happened between them in <file>.<phase>
 *        (W2 takes one of each of its storms);
 * - GET  /healthz        (mesh) a liveness answer, which R1 times while the server replays.
 * BENCH_WORKERS=N (N ≥ 1; with BENCH_BUS=postgres, as the example server's WORKERS): this process is
 * the primary of a node:cluster of N workers, each one such server on the one port. The primary hands
 * connections out round robin (node:cluster's default on Linux) and serves nothing itself; a control
 * request reaches one worker, which publishes (the others get the events through the bus) or asks
 * the primary to gather every worker's report. `ready` is printed once every worker listens;
 * SIGTERM stops them all, and a worker that dies on its own ends the run.
 */
import cluster, { type Worker } from 'node:cluster';
import { once } from 'node:events';
import postgres from 'postgres';
import { PEERS, type BenchBus, type BenchTask, type Control, type Peer, type PeerName } from './peers.js';

export interface PublishPlan {
  kind: 'update' | 'output';
  tasks: BenchTask[];
  /** Events in all; event i goes to tasks[i % tasks.length]. */
  count: number;
  /** Events per loop turn when there is no rate. */
  perTick: number;
  /** Events per second, spread evenly; unset: as fast as perTick allows. */
  rate?: number;
  /** Bytes of content of an output event. */
  size?: number;
  /** A measured round (not the warm-up): BENCH_PROFILE captures the first. */
  measured?: boolean;
}

/** What one process reports, for /bench/memory and /bench/workers. */
export interface ProcessReport {
  pid: number;
  memory: NodeJS.MemoryUsage;
  connections: number | null;
}

/** Between a cluster's primary and its workers. */
type Message =
  | { type: 'bench:listening' }
  | { type: 'bench:gather'; ref: number }
  | { type: 'bench:report'; id: number }
  | { type: 'bench:reported'; id: number; report: ProcessReport }
  | { type: 'bench:gathered'; ref: number; reports: ProcessReport[] };

const name = process.argv[2] as PeerName;
const workers = Number(process.env.BENCH_WORKERS ?? 0);
const now = () => (performance.timeOrigin + performance.now()).toFixed(3);

function run(peer: Peer, plan: PublishPlan): void {
  const content = 'x'.repeat(plan.size ?? 0);
  let i = 0;
  // With a rate, each event is stamped with the time it was due, not the time the publisher got
  // to it: a server whose fan-out blocks its own publisher would otherwise hide that wait from
  // the latency (coordinated omission).
  const origin = performance.timeOrigin + performance.now();
  const stamp = () => (plan.rate ? (origin + (i * 1000) / plan.rate).toFixed(3) : now());
  const one = () => {
    const task = plan.tasks[i % plan.tasks.length]!;
    if (plan.kind === 'update') peer.publishUpdate(task, i + 1, stamp());
    else peer.publishOutput(task, content);
    i++;
  };
  if (plan.rate) {
    const started = performance.now();
    const step = () => {
      const due = Math.floor(((performance.now() - started) * plan.rate!) / 1000) + 1;
      while (i < Math.min(due, plan.count)) one();
      if (i < plan.count) setTimeout(step, 1);
    };
    step();
    return;
  }
  const burst = () => {
    for (let n = 0; n < plan.perTick && i < plan.count; n++) one();
    if (i < plan.count) setImmediate(burst);
  };
  burst();
}

/** Starts the CPU profiler; the function returned stops it and writes the profile to `file`. */
async function startProfile(): Promise<(file: string) => Promise<void>> {
  const { Session } = await import('node:inspector/promises');
  const { writeFileSync } = await import('node:fs');
  const session = new Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.setSamplingInterval', { interval: 100 });
  await session.post('Profiler.start');
  return async (file) => {
    const { profile } = await session.post('Profiler.stop');
    session.disconnect();
    writeFileSync(file, JSON.stringify(profile));
  };
}

/** BENCH_PROFILE=<file>: a CPU profile of the first measured publishing round (BENCH_PROFILE_MS, default 400 ms). */
async function profile(file: string): Promise<void> {
  const stop = await startProfile();
  await new Promise((r) => setTimeout(r, Number(process.env.BENCH_PROFILE_MS ?? 400)));
  await stop(file);
}

/** The primary of BENCH_WORKERS workers: forks them, relays the gathering of their reports, stops them. */
function primary(): void {
  const live = () => Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && !w.isDead());
  const listening = new Set<number>();
  const gathering = new Map<number, { from: Worker; ref: number; reports: ProcessReport[] }>();
  let nextId = 0;
  let stopping = false;
  const stop = async (code: number) => {
    stopping = true;
    const running = live();
    for (const worker of running) worker.process.kill('SIGTERM');
    await Promise.all(running.map((worker) => (worker.isDead() ? undefined : once(worker, 'exit'))));
    process.exit(code);
  };
  cluster.on('message', (worker, message: Message) => {
    if (message.type === 'bench:listening') {
      listening.add(worker.id);
      if (listening.size === workers) process.stdout.write('ready\n');
    } else if (message.type === 'bench:gather') {
      const id = nextId++;
      gathering.set(id, { from: worker, ref: message.ref, reports: [] });
      for (const w of live()) w.send({ type: 'bench:report', id } satisfies Message);
    } else if (message.type === 'bench:reported') {
      const gathered = gathering.get(message.id);
      if (!gathered) return;
      gathered.reports.push(message.report);
      if (gathered.reports.length < live().length) return;
      gathering.delete(message.id);
      gathered.from.send({ type: 'bench:gathered', ref: gathered.ref, reports: gathered.reports } satisfies Message);
    }
  });
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) return;
    process.stderr.write(`bench worker ${worker.process.pid} exited (${code ?? signal}): stopping\n`);
    void stop(1);
  });
  process.on('SIGTERM', () => void stop(0));
  for (let i = 0; i < workers; i++) cluster.fork();
}

/** One server: the whole of it, or one worker of a cluster. */
async function serve(): Promise<void> {
  const sql = postgres(process.env.DATABASE_URL!, { max: 10, onnotice: () => {} });
  // eslint-disable-next-line prefer-const -- assigned below, once the control it is given exists
  let peer: Peer;
  let profiling: Promise<void> | undefined;
  let stopProfile: ((file: string) => Promise<void>) | undefined;
  const report = (): ProcessReport => {
    global.gc?.();
    global.gc?.();
    return { pid: process.pid, memory: process.memoryUsage(), connections: peer.connections?.() ?? null };
  };
  // A worker asks the primary for every worker's report (its own included) and waits for them.
  const asked = new Map<number, (reports: ProcessReport[]) => void>();
  let nextRef = 0;
  const reports = (): Promise<ProcessReport[]> | ProcessReport[] => {
    if (!cluster.isWorker) return [report()];
    const ref = nextRef++;
    process.send!({ type: 'bench:gather', ref } satisfies Message);
    return new Promise((resolve) => asked.set(ref, resolve));
  };
  process.on('message', (message: Message) => {
    if (message.type === 'bench:report') process.send!({ type: 'bench:reported', id: message.id, report: report() } satisfies Message);
    else if (message.type === 'bench:gathered') {
      asked.get(message.ref)?.(message.reports);
      asked.delete(message.ref);
    }
  });
  const control: Control = async (method, url, body) => {
    if (url === '/bench/memory') {
      const all = await reports();
      const sum = Object.fromEntries(
        Object.keys(all[0]!.memory).map((key) => [key, all.reduce((s, r) => s + r.memory[key as keyof NodeJS.MemoryUsage], 0)]),
      );
      return { status: 200, body: JSON.stringify(sum) };
    }
    if (url === '/bench/workers') {
      const all = await reports();
      return { status: 200, body: JSON.stringify(all.map(({ pid, connections }) => ({ pid, connections }))) };
    }
    if (url === '/bench/profile/start' && method === 'POST' && process.env.BENCH_PROFILE) {
      stopProfile = await startProfile();
      return { status: 204, body: '' };
    }
    if (url === '/bench/profile/stop' && method === 'POST' && stopProfile) {
      await stopProfile(`${process.env.BENCH_PROFILE}.${body.replace(/[^a-z0-9-]/gi, '')}`);
      stopProfile = undefined;
      return { status: 204, body: '' };
    }
    if (url === '/bench/publish' && method === 'POST') {
      // Published after the answer has gone: the generator's clock starts when it sends the request.
      setImmediate(() => {
        const plan = JSON.parse(body) as PublishPlan;
        if (process.env.BENCH_PROFILE && plan.measured && !profiling) profiling = profile(process.env.BENCH_PROFILE);
        run(peer, plan);
      });
      return { status: 202, body: '' };
    }
    return { status: 404, body: '' };
  };

  // A host's pool is connected long before a reconnect storm: open every connection now, so that
  // the storm does not measure connection set-up (SCRAM's key derivation blocks the loop).
  await Promise.all(Array.from({ length: 10 }, () => sql`SELECT pg_sleep(0.05)`));
  peer = await PEERS[name](sql, control, (process.env.BENCH_BUS ?? 'memory') as BenchBus);
  await peer.listen(Number(process.env.PORT));
  if (cluster.isWorker) process.send!({ type: 'bench:listening' } satisfies Message);
  else process.stdout.write('ready\n');
  process.on('SIGTERM', () => {
    void Promise.all([profiling, peer.close()]).finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 5000).unref();
  });
}

if (workers > 0 && cluster.isPrimary) primary();
else await serve();
