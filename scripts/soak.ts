/**
 * `npm run soak -- [--connections 5000] [--minutes 10] [--rate 100]`: a bounded loopback soak of the
 * example server (a child process) with well-behaved clients, churn, floods and clients that stop
 * reading. Prints connections, frames, errors and server RSS over time, then a verdict: RSS flat
 * after warm-up, and zero lost events for the well-behaved clients. Not part of `npm test`.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { parseArgs } from 'node:util';
import pino from 'pino';
import postgres from 'postgres';
import WebSocket from 'ws';
import { createApiKey } from '../example/src/api-keys.js';
import { freePort, scratchDirectory, startEmbeddedPostgres } from '../example/src/embedded-postgres.js';
import { migrate } from '../example/src/migrations.js';

const { values } = parseArgs({
  options: {
    connections: { type: 'string', default: '5000' },
    minutes: { type: 'string', default: '10' },
    rate: { type: 'string', default: '100' },
  },
});
const CONNECTIONS = Number(values.connections);
const DURATION_MS = Number(values.minutes) * 60_000;
const PATCH_RATE = Number(values.rate);
const OWNERS = Math.max(1, Math.floor(CONNECTIONS / 20));
const GOOD = Math.floor(CONNECTIONS * 0.85);
const CHURN = Math.floor(CONNECTIONS * 0.1);
const FLOODERS = Math.max(1, Math.floor(CONNECTIONS * 0.01));
const STALLED = Math.max(1, Math.floor(CONNECTIONS * 0.002));

const log = pino({ level: 'warn' }, pino.destination(2));
const print = (line: string) => process.stdout.write(`${line}\n`);

// Database: DATABASE_URL, or an embedded one in a scratch folder.
const scratch = await scratchDirectory('soak');
const embedded = process.env.DATABASE_URL ? undefined : await startEmbeddedPostgres({ dir: scratch, log });
const url = process.env.DATABASE_URL ?? embedded!.url;
const sql = postgres(url, { max: 4, onnotice: () => {} });
await migrate(sql);

const owners = await Promise.all(
  Array.from({ length: OWNERS }, async () => {
    const ownerId = crypto.randomUUID();
    const key = await createApiKey(sql, { ownerId, admin: false });
    const tasks = await sql<
      { id: string }[]
    >`INSERT INTO tasks (owner_id, name) SELECT ${ownerId}, 'soak' FROM generate_series(1, 2) RETURNING id::text AS id`;
    return { ownerId, key, tasks: tasks.map((t) => t.id) };
  }),
);

// The server under test, in its own process so that its RSS is its own.
const port = await freePort();
const server = spawn(process.execPath, ['--import', 'tsx', 'example/src/main.ts'], {
  env: { ...process.env, DATABASE_URL: url, PORT: String(port), LOG_LEVEL: 'warn' },
  stdio: ['ignore', 'inherit', 'inherit'],
});
const base = `http://127.0.0.1:${port}`;
for (let ready = false; !ready;) {
  if (server.exitCode !== null) throw new Error(`server exited (${server.exitCode})`);
  ready = await fetch(`${base}/healthz`).then(
    (r) => r.ok,
    () => false,
  );
  if (!ready) await new Promise((r) => setTimeout(r, 200));
}
const wsUrl = `${base.replace('http', 'ws')}/api/v1/mesh/tasks/subscribe`;
const rssMiB = () => {
  const status = readFileSync(`/proc/${server.pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)![1]) / 1024;
};

const stats = { frames: 0, errors: 0, reconnects: 0, churned: 0, floodCloses: 0, slowCloses: 0, gaps: 0 };
const finalVersion = new Map<string, number>();

function open(key: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl, { headers: { 'x-makima-api-key': key } });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

// Well-behaved clients: subscribeAll + one task; they must see every version of their owner's tasks.
interface Good {
  ws: WebSocket;
  owner: (typeof owners)[number];
  last: Map<string, number>;
}
const good: Good[] = [];
for (let i = 0; i < GOOD; i++) {
  const owner = owners[i % OWNERS]!;
  const ws = await open(owner.key);
  const g: Good = { ws, owner, last: new Map(owner.tasks.map((t) => [t, 1])) };
  ws.on('message', (data) => {
    stats.frames++;
    const frame = JSON.parse(data.toString());
    if (frame.type === 'taskUpdated') {
      if (frame.version !== (g.last.get(frame.taskId) ?? 0) + 1) stats.gaps++;
      g.last.set(frame.taskId, frame.version);
    } else if (frame.type === 'error') stats.errors++;
  });
  ws.on('close', (code) => print(`well-behaved client closed unexpectedly: ${code}`));
  ws.send(JSON.stringify({ type: 'subscribeAll' }));
  ws.send(JSON.stringify({ type: 'subscribe', taskId: owner.tasks[i % 2] }));
  good.push(g);
}

let running = true;

// Churn: connect, subscribe, leave, again.
async function churn(i: number): Promise<void> {
  while (running) {
    const owner = owners[(i * 7) % OWNERS]!;
    try {
      const ws = await open(owner.key);
      ws.on('message', () => stats.frames++);
      ws.send(JSON.stringify({ type: 'subscribe', taskId: owner.tasks[0] }));
      ws.send(JSON.stringify({ type: 'subscribeOutput', taskId: owner.tasks[1] }));
      await new Promise((r) => setTimeout(r, 200 + Math.random() * 2000));
      ws.close();
      stats.churned++;
    } catch {
      stats.reconnects++;
    }
    await new Promise((r) => setTimeout(r, Math.random() * 500));
  }
}

// Floods: garbage as fast as the socket takes it, until the server closes them (1008), then again.
async function flood(i: number): Promise<void> {
  while (running) {
    try {
      const ws = await open(owners[i % OWNERS]!.key);
      await new Promise<void>((resolve) => {
        ws.on('close', (code) => {
          if (code === 1008) stats.floodCloses++;
          resolve();
        });
        const burst = () => {
          if (ws.readyState !== WebSocket.OPEN || !running) return ws.terminate();
          for (let n = 0; n < 50; n++) ws.send(n % 2 ? '{"type":"nope"}' : 'not json');
          setTimeout(burst, 5);
        };
        burst();
      });
    } catch {
      stats.reconnects++;
    }
  }
}

// Stalled: subscribe to output and stop reading for a minute; by then the server must have cut
// them (4008 after 30 s backed up). Reading again shows it: the connection is gone at once.
async function stall(i: number): Promise<void> {
  while (running) {
    const owner = owners[i % OWNERS]!;
    try {
      const ws = await open(owner.key);
      const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()));
      ws.send(JSON.stringify({ type: 'subscribeOutput', taskId: owner.tasks[0] }));
      ws.send(JSON.stringify({ type: 'subscribeAll' }));
      const raw = (ws as unknown as { _socket: Socket })._socket;
      raw.pause();
      for (let s = 0; s < 60 && running; s++) await new Promise((r) => setTimeout(r, 1000));
      raw.resume();
      const cut = await Promise.race([closed.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 2000))]);
      if (cut) stats.slowCloses++;
      else ws.terminate();
    } catch {
      stats.reconnects++;
    }
  }
}

// Publisher: PATCH at a steady rate (every well-behaved client of that owner must see it), each
// followed by an output chunk for the stalled clients to choke on.
async function publish(): Promise<void> {
  let n = 0;
  const interval = 1000 / PATCH_RATE;
  const started = performance.now();
  while (running) {
    const owner = owners[n % OWNERS]!;
    const taskId = owner.tasks[Math.floor(n / OWNERS) % 2]!;
    const res = await fetch(`${base}/api/v1/mesh/tasks/${taskId}`, {
      method: 'PATCH',
      headers: { 'x-makima-api-key': owner.key, 'content-type': 'application/json' },
      body: JSON.stringify({ status: `s${n}` }),
    });
    if (res.ok) finalVersion.set(taskId, ((await res.json()) as { version: number }).version);
    else stats.errors++;
    // Each stalled client's task gets a 64 KiB chunk in turn: enough to fill loopback's buffers
    // and the soft limit within a minute, so that the server has to cut them (4008).
    const stalledOwner = owners[n % Math.min(OWNERS, STALLED)]!;
    await fetch(`${base}/api/v1/mesh/tasks/${stalledOwner.tasks[0]}/output`, {
      method: 'POST',
      headers: { 'x-makima-api-key': stalledOwner.key, 'content-type': 'application/json' },
      body: JSON.stringify({ messageType: 'raw', content: 'o'.repeat(64 * 1024) }),
    });
    n++;
    const due = started + n * interval - performance.now();
    if (due > 0) await new Promise((r) => setTimeout(r, due));
  }
}

print(
  `soak: ${CONNECTIONS} connections (${GOOD} well-behaved, ${CHURN} churning, ${FLOODERS} flooding, ${STALLED} stalled), ${values.minutes} min, ${PATCH_RATE} PATCH/s`,
);
print('t(s)  conns  frames        errors  churned  floodCloses  slowCloses  gaps  serverRSS(MiB)');
const workers = [
  ...Array.from({ length: CHURN }, (_, i) => churn(i)),
  ...Array.from({ length: FLOODERS }, (_, i) => flood(i)),
  ...Array.from({ length: STALLED }, (_, i) => stall(i)),
  publish(),
];
const t0 = performance.now();
const samples: Array<{ t: number; rss: number }> = [];
const reporter = setInterval(() => {
  const t = (performance.now() - t0) / 1000;
  const rss = rssMiB();
  samples.push({ t, rss });
  const conns = good.filter((g) => g.ws.readyState === WebSocket.OPEN).length + CHURN + FLOODERS + STALLED;
  print(
    `${t.toFixed(0).padStart(4)}  ${String(conns).padStart(5)}  ${String(stats.frames).padStart(12)}  ${String(stats.errors).padStart(6)}  ${String(stats.churned).padStart(7)}  ${String(stats.floodCloses).padStart(11)}  ${String(stats.slowCloses).padStart(10)}  ${String(stats.gaps).padStart(4)}  ${rss.toFixed(1).padStart(8)}`,
  );
}, 10_000);

await new Promise((r) => setTimeout(r, DURATION_MS));
running = false;
clearInterval(reporter);
await Promise.all(workers);
// Let the last PATCHes' frames arrive: every well-behaved client answers a round trip first.
await Promise.all(
  good.map(
    (g) =>
      new Promise<void>((resolve) => {
        g.ws.once('pong', () => resolve());
        g.ws.ping();
      }),
  ),
);

let lost = 0;
for (const g of good) {
  for (const taskId of g.owner.tasks) {
    const expected = finalVersion.get(taskId);
    if (expected !== undefined && (g.last.get(taskId) ?? 0) !== expected) lost++;
  }
}
const warm = samples.filter((s) => s.t >= DURATION_MS / 1000 / 5);
const first = warm.slice(0, Math.max(1, Math.floor(warm.length / 3)));
const last = warm.slice(-Math.max(1, Math.floor(warm.length / 3)));
const mean = (xs: typeof warm) => xs.reduce((a, s) => a + s.rss, 0) / xs.length;
const growth = warm.length > 2 ? (mean(last) - mean(first)) / mean(first) : 0;
const flat = growth < 0.1;
print('');
print(
  `RSS after warm-up: first third ${mean(first).toFixed(1)} MiB, last third ${mean(last).toFixed(1)} MiB (${(growth * 100).toFixed(1)}%): ${flat ? 'flat' : 'GROWING'}`,
);
print(`well-behaved clients: ${GOOD}, out-of-order or missing versions: ${stats.gaps}, streams not at the final version: ${lost}`);
print(`verdict: ${flat && lost === 0 && stats.gaps === 0 ? 'PASS' : 'FAIL'}`);

for (const g of good) g.ws.removeAllListeners('close').terminate();
server.kill('SIGTERM');
await new Promise((r) => server.once('exit', r));
await sql.end({ timeout: 1 });
await embedded?.stop();
await rm(scratch, { recursive: true, force: true });
process.exit(flat && lost === 0 && stats.gaps === 0 ? 0 : 1);
