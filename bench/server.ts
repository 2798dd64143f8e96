/**
 * One benchmark server process: `node --expose-gc --import tsx bench/server.ts <peer>` with
 * DATABASE_URL, PORT and BENCH_BUS (`memory`, the default, or `postgres`). The load generator
 * drives it over HTTP:
 * - POST /bench/publish  a plan (below): answered at once, then published;
 * - GET  /bench/memory   process.memoryUsage() after a full GC;
 * - GET  /healthz        (mesh) a liveness answer, which R1 times while the server replays.
 */
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

const name = process.argv[2] as PeerName;
const sql = postgres(process.env.DATABASE_URL!, { max: 10, onnotice: () => {} });
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

/** BENCH_PROFILE=<file>: a CPU profile of the first measured publishing round (BENCH_PROFILE_MS, default 400 ms). */
async function profile(file: string): Promise<void> {
  const { Session } = await import('node:inspector/promises');
  const { writeFileSync } = await import('node:fs');
  const session = new Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.setSamplingInterval', { interval: 100 });
  await session.post('Profiler.start');
  await new Promise((r) => setTimeout(r, Number(process.env.BENCH_PROFILE_MS ?? 400)));
  const { profile } = await session.post('Profiler.stop');
  writeFileSync(file, JSON.stringify(profile));
}

// eslint-disable-next-line prefer-const -- assigned below, once the control it is given exists
let peer: Peer;
let profiling: Promise<void> | undefined;
const control: Control = (method, url, body) => {
  if (url === '/bench/memory') {
    global.gc?.();
    global.gc?.();
    return { status: 200, body: JSON.stringify(process.memoryUsage()) };
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
process.stdout.write('ready\n');
process.on('SIGTERM', () => {
  void Promise.all([profiling, peer.close()]).finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 5000).unref();
});
