/**
 * WORKERS=2: the example server as a node:cluster of real processes on one port and one
 * PostgreSQL. Connections land on both workers; events published through one reach subscribers of
 * the other, in order, and resume there with `since`; a worker that dies is forked again; SIGTERM
 * to the primary closes every socket with 1001 and stops every process, exit code 0.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { API_KEY_HEADER, createApiKey } from '../example/src/api-keys.js';
import { respawnDelayMs } from '../example/src/cluster.js';
import { MAX_WORKERS, readConfig } from '../example/src/config.js';
import { scratchDirectory } from '../example/src/embedded-postgres.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { TestClient, type Frame } from './helpers/ws-client.js';

const checkout = fileURLToPath(new URL('..', import.meta.url));

type LogLine = { level: number; msg: string; pid: number; worker?: number; [field: string]: unknown };

interface Cluster {
  pid: number;
  url: string;
  wsUrl: string;
  lines: LogLine[];
  /** Everything that was not a JSON log line. */
  other: string[];
  /** The `count`-th line (1-based) that matches, once it has arrived. */
  nth(count: number, match: (line: LogLine) => boolean): Promise<LogLine>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves once no process holds its stdout and stderr: the primary and every worker have exited. */
  allExited: Promise<void>;
}

/**
 * `node example/src/main.ts` with WORKERS and a database; or, `ownGroup`, in a process group of
 * its own with its embedded PostgreSQL, as a terminal's foreground group (which Ctrl-C signals).
 */
function start(env: Record<string, string>, ownGroup?: { dataDir: string }): Cluster & { ready: Promise<void> } {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', SHUTDOWN_DRAIN_MS: '0', ...env };
  if (ownGroup) {
    delete childEnv.DATABASE_URL;
    childEnv.DATA_DIR = ownGroup.dataDir;
  }
  const child = spawn(process.execPath, ['--import', 'tsx', 'example/src/main.ts'], {
    cwd: checkout,
    detached: Boolean(ownGroup),
    env: childEnv,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: LogLine[] = [];
  const other: string[] = [];
  const waiting: { count: number; match: (line: LogLine) => boolean; resolve: (line: LogLine) => void }[] = [];
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  const check = () => {
    for (const w of [...waiting]) {
      const found = lines.filter(w.match);
      if (found.length >= w.count) {
        waiting.splice(waiting.indexOf(w), 1);
        w.resolve(found[w.count - 1]!);
      }
    }
  };
  const ended: Promise<void>[] = [];
  for (const stream of [child.stdout, child.stderr]) {
    ended.push(new Promise((resolve) => stream.once('close', () => resolve())));
    createInterface({ input: stream }).on('line', (text) => {
      try {
        lines.push(JSON.parse(text) as LogLine);
      } catch {
        other.push(text);
        return;
      }
      check();
    });
  }
  const nth = (count: number, match: (line: LogLine) => boolean) =>
    new Promise<LogLine>((resolve, reject) => {
      waiting.push({ count, match, resolve });
      check();
      void exited.then((how) =>
        reject(
          new Error(`exited (${how.code ?? how.signal}) first:\n${lines.map((l) => `${l.pid} ${l.msg}`).join('\n')}\n${other.join('\n')}`),
        ),
      );
    });
  const allExited = Promise.all(ended).then(() => {});
  const run = { pid: child.pid!, url: '', wsUrl: '', lines, other, nth, exited, allExited } as Cluster & { ready: Promise<void> };
  run.ready = nth(1, (l) => /API docs at/.test(l.msg)).then((line) => {
    run.url = new URL(String(line.docs)).origin;
    run.wsUrl = `${run.url.replace('http', 'ws')}/api/v1/mesh/tasks/subscribe`;
  });
  // A run that is meant to be refused never gets ready: its test awaits `exited` instead.
  run.ready.catch(() => {});
  return run;
}

/**
 * Running, not exited: a worker whose primary exited first is a zombie until init reaps it, and
 * a signal 0 still reaches that.
 */
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^\d+ \(.*\) [ZX]/s.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
};

const isOpen = (l: LogLine) => l.msg === 'websocket open';
const isListening = (l: LogLine) => /^Server listening at/.test(l.msg);

let db: TestDatabase;
let run: Cluster;
let startMs: number;
before(async () => {
  db = await createTestDatabase();
  const began = performance.now();
  const started = start({ WORKERS: '2', DATABASE_URL: db.url });
  await started.ready;
  startMs = performance.now() - began;
  run = started;
});
after(async () => {
  if (run && alive(run.pid)) {
    process.kill(run.pid, 'SIGTERM');
    await run.exited;
  }
  await db.drop();
});

/** Opens a socket and learns which worker took it, from the "websocket open" line it causes. */
async function connect(key: string): Promise<{ client: TestClient; pid: number }> {
  const before = run.lines.filter(isOpen).length;
  const client = await TestClient.connect(run.wsUrl, { [API_KEY_HEADER]: key });
  // Sockets are opened one at a time: the next such line is this one's.
  const line = await run.nth(before + 1, isOpen);
  return { client, pid: line.pid };
}

/** Opens sockets until one lands on `pid` (the others are closed): connections go round the workers. */
async function connectTo(pid: number, key: string): Promise<TestClient> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const socket = await connect(key);
    if (socket.pid === pid) return socket.client;
    await socket.client.close();
  }
  throw new Error(`no socket landed on worker ${pid} in 20 attempts`);
}

function workerPids(): number[] {
  const pids = [...new Set(run.lines.filter(isListening).map((l) => l.pid))].filter(alive);
  return pids;
}

async function api(
  key: string,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; json: Record<string, unknown>; pid: number }> {
  const before = run.lines.filter((l) => l.msg === 'incoming request').length;
  const res = await fetch(`${run.url}/api/v1${path}`, {
    method,
    headers: { [API_KEY_HEADER]: key, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = (await res.json()) as Record<string, unknown>;
  // One request at a time: the next "incoming request" line is this one's, and names its worker.
  const line = await run.nth(before + 1, (l) => l.msg === 'incoming request');
  return { status: res.status, json, pid: line.pid };
}

test('the primary names the address once, with the number of workers; every worker line names its worker', async (t) => {
  t.diagnostic(`WORKERS=2 start-up (spawn to the address line): ${Math.round(startMs)} ms`);
  const named = run.lines.filter((l) => /API docs at/.test(l.msg));
  assert.equal(named.length, 1);
  assert.equal(named[0]!.workers, 2);
  assert.equal(named[0]!.pid, run.pid, 'from the primary');
  const listening = run.lines.filter(isListening);
  assert.equal(listening.length, 2);
  assert.deepEqual(new Set(listening.map((l) => l.worker)), new Set([1, 2]));
  assert.ok(listening.every((l) => l.pid !== run.pid));
  // Every line of a worker process has its worker binding.
  assert.deepEqual(
    run.lines.filter((l) => l.pid !== run.pid && typeof l.worker !== 'number'),
    [],
  );
});

test('connections on the one port land on both workers', async (t) => {
  const key = await createApiKey(db.sql, { ownerId: crypto.randomUUID(), admin: false });
  const sockets = [];
  for (let i = 0; i < 6; i++) sockets.push(await connect(key));
  const perWorker = new Map<number, number>();
  for (const s of sockets) perWorker.set(s.pid, (perWorker.get(s.pid) ?? 0) + 1);
  t.diagnostic(`6 sockets per worker pid: ${JSON.stringify(Object.fromEntries(perWorker))}`);
  assert.deepEqual(new Set(perWorker.keys()), new Set(workerPids()));
  assert.equal(perWorker.size, 2);
  for (const s of sockets) await s.client.close();
});

test('an event published through one worker reaches subscribers on both, in order; `since` resumes on the other worker', async (t) => {
  const key = await createApiKey(db.sql, { ownerId: crypto.randomUUID(), admin: false });
  const created = await api(key, 'POST', '/mesh/tasks', { name: 'across workers' });
  assert.equal(created.status, 201);
  const taskId = String(created.json.id);

  const [a, b] = workerPids();
  assert.ok(a && b && a !== b);
  const subscribers = [
    { pid: a, client: await connectTo(a, key) },
    { pid: b, client: await connectTo(b, key) },
  ];
  for (const s of subscribers) assert.deepEqual(await s.client.request({ type: 'subscribe', taskId }), { type: 'subscribed', taskId });

  const statuses = ['queued', 'running', 'waiting', 'running-again', 'done'];
  const publishedBy: number[] = [];
  for (const status of statuses) {
    const patched = await api(key, 'PATCH', `/mesh/tasks/${taskId}`, { status });
    assert.equal(patched.status, 200);
    publishedBy.push(patched.pid);
  }
  t.diagnostic(`PATCHes served by ${JSON.stringify(publishedBy)}; subscribers on ${a} and ${b}`);
  // Whichever worker served a PATCH, one of the two subscribers is on the other.
  const received = new Map<number, Frame[]>();
  for (const s of subscribers) {
    const frames: Frame[] = [];
    for (let i = 0; i < statuses.length; i++) frames.push(await s.client.next());
    received.set(s.pid, frames);
    assert.deepEqual(
      frames.map((f) => [f.type, f.taskId, f.version, f.status]),
      statuses.map((status, i) => ['taskUpdated', taskId, i + 2, status]),
      `subscriber on worker ${s.pid}: every event once, in order`,
    );
  }

  // A client of worker a that got the first two events resumes on worker b from the second's cursor.
  const cursor = received.get(a)![1]!.cursor;
  assert.equal(typeof cursor, 'string');
  const resumed = await connectTo(b, key);
  assert.deepEqual(await resumed.request({ type: 'subscribe', taskId, since: cursor }), { type: 'subscribed', taskId });
  const replayed: Frame[] = [];
  for (let i = 2; i < statuses.length; i++) replayed.push(await resumed.next());
  assert.deepEqual(
    replayed.map((f) => [f.type, f.version, f.status, f.cursor]),
    received
      .get(a)!
      .slice(2)
      .map((f) => [f.type, f.version, f.status, f.cursor]),
    'what followed the cursor, in order, with the same cursors',
  );
  // And then live, with nothing repeated at the seam.
  const live = await api(key, 'PATCH', `/mesh/tasks/${taskId}`, { status: 'reopened' });
  assert.equal(live.status, 200);
  const next = await resumed.next();
  assert.deepEqual([next.type, next.version, next.status], ['taskUpdated', statuses.length + 2, 'reopened']);
  for (const s of subscribers) assert.equal((await s.client.next()).version, statuses.length + 2);

  for (const c of [resumed, ...subscribers.map((s) => s.client)]) await c.close();
});

test('a worker that dies is logged and forked again; the port keeps both workers', async (t) => {
  const [victim] = workerPids();
  const deathsBefore = run.lines.filter((l) => l.msg === 'worker died: forking another').length;
  const listeningBefore = run.lines.filter(isListening).length;
  const killed = performance.now();
  process.kill(victim!, 'SIGKILL');
  const died = await run.nth(deathsBefore + 1, (l) => l.msg === 'worker died: forking another');
  assert.equal(died.pid, run.pid);
  assert.equal(died.workerPid, victim);
  assert.equal(died.signal, 'SIGKILL');
  assert.ok(Number(died.delayMs) > 0, 'a back-off, not a spin');
  const replacement = await run.nth(listeningBefore + 1, isListening);
  t.diagnostic(`SIGKILL to the replacement listening: ${Math.round(performance.now() - killed)} ms (back-off ${died.delayMs} ms)`);
  assert.notEqual(replacement.pid, victim);
  assert.equal(alive(victim!), false);
  assert.equal(workerPids().length, 2);
  // Still one address line: a replacement does not name it again.
  assert.equal(run.lines.filter((l) => /API docs at/.test(l.msg)).length, 1);

  const key = await createApiKey(db.sql, { ownerId: crypto.randomUUID(), admin: false });
  const client = await connectTo(replacement.pid, key);
  await client.close();
});

test('SIGTERM to the primary: every socket gets 1001, every process exits, exit code 0', async (t) => {
  const key = await createApiKey(db.sql, { ownerId: crypto.randomUUID(), admin: false });
  const sockets = [];
  for (let i = 0; i < 4; i++) sockets.push(await connect(key));
  const workers = workerPids();
  assert.deepEqual(new Set(sockets.map((s) => s.pid)), new Set(workers), 'sockets on both workers');

  const sent = performance.now();
  process.kill(run.pid, 'SIGTERM');
  const closes = await Promise.all(sockets.map((s) => s.client.closed));
  assert.deepEqual(
    closes.map((c) => c.code),
    sockets.map(() => 1001),
  );
  assert.deepEqual(await run.exited, { code: 0, signal: null }, run.other.join('\n'));
  t.diagnostic(`SIGTERM to the primary's exit: ${Math.round(performance.now() - sent)} ms`);
  assert.deepEqual(workers.filter(alive), [], 'no worker outlives the primary');
  // Each worker closed its server and stopped before the primary did.
  const primaryStopped = run.lines.findIndex((l) => l.pid === run.pid && l.msg === 'stopped');
  for (const pid of workers) {
    const stopped = run.lines.findIndex((l) => l.pid === pid && l.msg === 'stopped');
    assert.ok(stopped >= 0 && stopped < primaryStopped, `worker ${pid} stopped first`);
  }
  assert.deepEqual(
    run.lines.filter((l) => l.level >= 50 && l.msg !== 'worker died: forking another'),
    [],
  );
  assert.deepEqual(run.other, []);
});

test('Ctrl-C (SIGINT to the process group): the workers stop, then the embedded PostgreSQL the primary started once, exit code 0', async (t) => {
  const scratch = await scratchDirectory('workers');
  t.after(() => rm(scratch, { recursive: true, force: true }));
  const dev = start({ WORKERS: '2', SHUTDOWN_DRAIN_MS: '30000' }, { dataDir: scratch });
  await dev.ready;
  const postmaster = Number((await readFile(path.join(scratch, 'pg', 'postmaster.pid'), 'utf8')).split('\n')[0]);
  assert.equal(dev.lines.filter((l) => l.msg === 'embedded PostgreSQL started').length, 1, 'started once');
  assert.equal((await fetch(`${dev.url}/readyz`)).status, 200);
  const workers = [...new Set(dev.lines.filter(isListening).map((l) => l.pid))];
  assert.equal(workers.length, 2);

  const sent = performance.now();
  process.kill(-dev.pid, 'SIGINT');
  assert.deepEqual(await dev.exited, { code: 0, signal: null }, dev.other.join('\n'));
  t.diagnostic(`SIGINT to exit, 2 workers and the embedded PostgreSQL: ${Math.round(performance.now() - sent)} ms`);
  // No socket was open: no drain, though SHUTDOWN_DRAIN_MS is 30 s; the echoes were one request.
  for (const pid of workers) {
    assert.deepEqual(
      dev.lines.filter((l) => l.pid === pid && /^shutting down/.test(l.msg)).map((l) => l.drainMs),
      [0],
    );
  }
  const stoppedAt = (pid: number) => dev.lines.findIndex((l) => l.pid === pid && l.msg === 'stopped');
  const postgresStopped = dev.lines.findIndex((l) => l.msg === 'embedded PostgreSQL stopped');
  for (const pid of workers) assert.ok(stoppedAt(pid) >= 0 && stoppedAt(pid) < postgresStopped, `worker ${pid} stopped first`);
  assert.ok(postgresStopped < stoppedAt(dev.pid), dev.lines.map((l) => `${l.pid} ${l.msg}`).join('\n'));
  assert.deepEqual([postmaster, ...workers].filter(alive), []);
  assert.deepEqual(
    dev.lines.filter((l) => l.level >= 50 || /ECONNREFUSED/.test(JSON.stringify(l))),
    [],
  );
  assert.deepEqual(dev.other, []);
});

test('a second signal to the primary while the workers drain: every process exits at once, exit code 1', async (t) => {
  const draining = start({ WORKERS: '2', DATABASE_URL: db.url, SHUTDOWN_DRAIN_MS: '60000' });
  await draining.ready;
  const workers = [...new Set(draining.lines.filter(isListening).map((l) => l.pid))];
  process.kill(draining.pid, 'SIGTERM');
  for (const pid of workers) await draining.nth(1, (l) => l.pid === pid && /^shutting down/.test(l.msg));
  // A different signal is a second request at once, whatever the echo window.
  const sent = performance.now();
  process.kill(draining.pid, 'SIGINT');
  assert.deepEqual(await draining.exited, { code: 1, signal: null });
  await draining.allExited;
  t.diagnostic(`second signal to every process gone (60 s drain cut short): ${Math.round(performance.now() - sent)} ms`);
  assert.deepEqual(workers.filter(alive), []);
  const warned = draining.lines.filter((l) => l.msg === 'a second signal while shutting down: exiting without waiting').map((l) => l.pid);
  assert.ok(warned.includes(draining.pid), 'the primary says so');
  assert.deepEqual(
    draining.lines.filter((l) => l.msg === 'stopped'),
    [],
    'nobody waited for the drain',
  );
});

test('workers that cannot start (here: HOST is no address of this machine) stop the whole, exit code 1, rather than being forked forever', async () => {
  const refused = start({ WORKERS: '2', DATABASE_URL: db.url, HOST: '192.0.2.1' });
  assert.deepEqual(await refused.exited, { code: 1, signal: null });
  await refused.allExited;
  const failed = refused.lines.filter((l) => l.msg === 'a worker failed to start: stopping');
  assert.ok(failed.length >= 1);
  assert.ok(failed.every((l) => l.pid === refused.pid && l.code === 1));
  assert.deepEqual(
    refused.lines.filter((l) => l.msg === 'worker died: forking another'),
    [],
  );
  assert.equal(refused.lines.filter((l) => /API docs at/.test(l.msg)).length, 0);
});

test('WORKERS: 1 to 64, default 1; a bad value refuses to start with a message and no stack', async () => {
  assert.equal(readConfig({}).workers, 1);
  assert.equal(readConfig({ WORKERS: '' }).workers, 1);
  assert.equal(readConfig({ WORKERS: '2' }).workers, 2);
  assert.equal(readConfig({ WORKERS: String(MAX_WORKERS) }).workers, 64);
  for (const bad of ['0', '65', '-1', '1.5', 'two', '2x', '1e1', ' ']) {
    assert.throws(() => readConfig({ WORKERS: bad }), {
      message: `WORKERS must be a whole number of processes from 1 to 64, got ${bad}`,
    });
  }

  for (const bad of ['0', 'two']) {
    const refused = start({ WORKERS: bad, DATABASE_URL: db.url });
    assert.deepEqual(await refused.exited, { code: 1, signal: null });
    assert.deepEqual(
      refused.lines.map((l) => [l.level, l.msg]),
      [[60, `WORKERS must be a whole number of processes from 1 to 64, got ${bad}`]],
    );
    assert.deepEqual(refused.other, []);
  }
});

test('the back-off before forking again grows, and stays short', () => {
  const delays = [1, 2, 3, 4, 5, 6, 7, 8].map(respawnDelayMs);
  assert.deepEqual(delays, [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
});
