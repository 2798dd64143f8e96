/**
 * `npm run bench -- [--scale 1] [--peers mesh,seed,socketio,ceiling] [--workloads W1,W2,W3,W5,W6] [--repeat 1]`:
 * every workload against every peer, each pair with a fresh server process and a fresh load
 * generator process on loopback, then one table with the ratios. W6 runs two server processes of
 * a peer on the one database (publisher A, subscribers' B), for the peers that can span processes.
 * R1 (replay; not in the default list, run it with `--workloads R1 --peers mesh`) logs 10,000
 * updates for each of 200 tasks straight into `mesh_event_log`, then has 200 clients resume them
 * at once from a server on the PostgreSQL bus; only mesh can replay. BENCH_MESH_OPTIONS (JSON) adds
 * plugin options to its server, e.g. '{"replayConcurrency":8}'.
 * W8 (open a transcript; not in the default list either: `--workloads W8 --peers mesh`) logs
 * 10,000 outputs of 500 B for each of 20 tasks, then opens them from a server on the PostgreSQL
 * bus with `"since":"start"`: one at a time, then 200 clients at once; beside each, the same history
 * read over the REST history route in pages of 500.
 * W7 (many sockets; not in the default list: `--workloads W7 --peers mesh,socketio,ceiling`):
 * 19,000 sockets on one server process, 100,000 on the example server's workers (bench/w7/driver.ts).
 * W2 (targeted, 10,000 clients on a task each): the connect storm (`connectMs`: every handshake,
 * at most 500 in flight, below the servers' listen backlog of 511, so that no SYN is retried),
 * then the subscribe storm on those open sockets (`stormMs`), memory (W4), targeted updates, then
 * every client dropped at once and back: `reconnectMs` (connect + subscribe, each client
 * resubscribing as soon as it is open); for mesh also `resumeMs`, the same with each subscribe
 * carrying `since` with 3 missed events of its task to replay from the memory ring (its
 * `historySize` raised to hold them; the others cannot resume: their row shows their plain
 * reconnect, the issue's yardstick). BENCH_PROFILE=<file> also writes the server's CPU profile of
 * each W2 storm to <file>.connect, .subscribe, .reconnect, .resume (bench/profile-summary.ts reads them).
 * `--peers …,fastify,…` adds the ceiling's job mounted as a Fastify route (@fastify/websocket behind
 * an async hook that reads a header, no database): what the framework costs before mesh's own
 * work. W2 also reports the server's CPU (user + system) over each storm (`connectCpuMs`,
 * `stormCpuMs`, `reconnectCpuMs`, `resumeCpuMs`), steadier than its time on this machine.
 * Peers as cluster workers: `--peers mesh,mesh-w1,mesh-w2,ceiling` adds columns where the peer
 * runs as N node:cluster workers on one port, sharing events through the PostgreSQL bus (as the
 * example server's WORKERS=N), for W1 and W5 only (the other workloads skip these columns); the
 * single-process `mesh` column stays on the memory bus. Below the table, how the connections
 * spread over the workers (each worker's pid and open sockets, asked after subscribing).
 * `--scale` shrinks the client and event counts; the recorded runs use 1.
 */
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pino from 'pino';
import postgres from 'postgres';
import { freePort, scratchDirectory, startEmbeddedPostgres } from '../example/src/embedded-postgres.js';
import { migrate as migrateEventLog } from '../src/bus/postgres/migration.js';
import { Writer } from '../src/bus/postgres/writer.js';
import { migrate } from '../example/src/migrations.js';
import { BUS_PEERS, type BenchBus, type PeerName } from './peers.js';
import { median } from './stats.js';
import { runW7 } from './w7/driver.js';

const { values } = parseArgs({
  options: {
    scale: { type: 'string', default: '1' },
    peers: { type: 'string', default: 'mesh,seed,socketio,ceiling' },
    workloads: { type: 'string', default: 'W1,W2,W3,W5,W6' },
    repeat: { type: 'string', default: '1' },
  },
});
/**
 * `--repeat N`: each workload runs its peers N times, interleaved (mesh, ceiling, mesh, ceiling…),
 * and the table shows each measure's median, then the N ratios of mesh to each peer, repeat by
 * repeat. For measures that swing between runs on this machine (W1: the generator's loopback reads
 * fall in one of two regimes, run by run), a single pair says little.
 */
const repeats = Number(values.repeat);
if (!Number.isInteger(repeats) || repeats < 1) throw new Error('--repeat takes a whole number ≥ 1');
/** A column of the table: a peer, alone (`mesh`) or as N cluster workers on the PostgreSQL bus (`mesh-w2`). */
const peers = values.peers.split(',');
const variant = (column: string): { peer: PeerName; workers: number } => {
  const match = /^(.*)-w([1-9][0-9]*)$/.exec(column);
  return match ? { peer: match[1] as PeerName, workers: Number(match[2]) } : { peer: column as PeerName, workers: 0 };
};
/** What the cluster variants run: the broadcast and its latency (issue 16, point 6). */
const WORKER_WORKLOADS = ['W1', 'W5'];
for (const column of peers) {
  const { peer, workers } = variant(column);
  if (workers > 0 && !BUS_PEERS.includes(peer)) throw new Error(`${column}: only ${BUS_PEERS.join(', ')} can run as workers on one bus`);
}
const workloads = values.workloads.split(',');
const print = (line = '') => process.stdout.write(`${line}\n`);

const scratch = await scratchDirectory('bench');
const embedded = process.env.DATABASE_URL ? undefined : await startEmbeddedPostgres({ dir: scratch, log: pino({ level: 'warn' }) });
const url = process.env.DATABASE_URL ?? embedded!.url;
const sql = postgres(url, { max: 2, onnotice: () => {} });
await migrate(sql);
// A diagnosis, not a mode: BENCH_SYNCHRONOUS_COMMIT=off shows what W6 costs without waiting for
// the WAL flush at each commit (no longer durable: a crash may take back an event a client saw).
if (process.env.BENCH_SYNCHRONOUS_COMMIT === 'off') {
  // Never on a database of someone else's: it would stay set there.
  if (!embedded) throw new Error('BENCH_SYNCHRONOUS_COMMIT=off is for the embedded database only: unset DATABASE_URL');
  await sql`DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET synchronous_commit = off', current_database()); END $$`;
}
const tasks = await sql<{ taskId: string; ownerId: string }[]>`
  INSERT INTO tasks (id, owner_id, name)
  SELECT gen_random_uuid(), gen_random_uuid(), 'bench' FROM generate_series(1, 10000)
  RETURNING id::text AS "taskId", owner_id::text AS "ownerId"`;
const tasksFile = path.join(scratch, 'tasks.json');
writeFileSync(tasksFile, JSON.stringify([...tasks]));
/** The embedded PostgreSQL's postmaster: the watcher (bench/poll.ts) adds up its processes' CPU. */
let postmasterPid: string | undefined;
if (embedded) {
  const [setting] = await sql<{ data_directory: string }[]>`SHOW data_directory`;
  postmasterPid = readFileSync(path.join(setting!.data_directory, 'postmaster.pid'), 'utf8').split('\n')[0];
}
await sql.end();

/** The peers that can resume a stream from a cursor (R1) or replay a task's whole history (W8). */
const REPLAY_PEERS: readonly PeerName[] = ['mesh'];
const scaled = (value: number) => Math.max(1, Math.round(value * Number(values.scale)));
/** R1: how many tasks are resumed (one client each), and how many logged updates each resumes. */
const REPLAY_TASKS = scaled(200);
const REPLAY_EVENTS = scaled(10_000);
/** W2: its clients (one task each), and how many events each resumed subscribe replays. */
const TARGETED_CLIENTS = Math.min(scaled(10_000), tasks.length);
const RESUMED_EVENTS = 3;

/**
 * R1's log: one update of a task nobody resumes (its cursor is every client's `since`), then
 * REPLAY_EVENTS updates for each of the first REPLAY_TASKS tasks, interleaved (version g of every
 * task, then g + 1), in one `INSERT … SELECT generate_series` as the plugin would have logged them
 * (owner settled, payload without taskId). Then VACUUM ANALYZE and a checkpoint, so that neither
 * autovacuum nor the checkpointer picks this moment to start during the replay. Returns the cursor.
 */
async function seedReplay(): Promise<string> {
  const db = postgres(url, { max: 1, onnotice: () => {} });
  try {
    // The plugin's tables, as the server would create them (its own migration runs again at start).
    await migrateEventLog(db, { tasks: { table: 'tasks' } });
    // json since the NUL fix, jsonb before it: the same insert serves both.
    const [column] = await db<{ type: string }[]>`
      SELECT format_type(atttypid, atttypmod) AS type FROM pg_attribute
      WHERE attrelid = 'mesh_event_log'::regclass AND attname = 'payload'`;
    const payload = (version: string) =>
      db.unsafe(
        `json_build_object('version', ${version}, 'status', 'running', 'updatedFields', json_build_array('status'), 'updatedBy', 'bench-seed')::${column!.type === 'jsonb' ? 'jsonb' : 'json'}`,
      );
    const marker = tasks[REPLAY_TASKS]!;
    const [first] = await db<{ cursor: string }[]>`
      INSERT INTO mesh_event_log (kind, task_id, owner_id, owner_given, payload)
      VALUES ('update', ${marker.taskId}::uuid, ${marker.ownerId}::uuid, true, ${payload('1')})
      RETURNING mesh_log_cursor(txid, id) AS cursor`;
    const resumed = tasks.slice(0, REPLAY_TASKS);
    const started = performance.now();
    await db`
      INSERT INTO mesh_event_log (kind, task_id, owner_id, owner_given, payload)
      SELECT 'update', t.task_id, t.owner_id, true, ${payload('g')}
      FROM generate_series(1, ${REPLAY_EVENTS}::int) g
      CROSS JOIN unnest(${resumed.map((t) => t.taskId)}::uuid[], ${resumed.map((t) => t.ownerId)}::uuid[]) WITH ORDINALITY AS t(task_id, owner_id, n)
      ORDER BY g, t.n`;
    const inserted = performance.now() - started;
    await db`VACUUM ANALYZE mesh_event_log`;
    await db`CHECKPOINT`.catch(() => {});
    const [table] = await db<{ rows: number; size: string }[]>`
      SELECT count(*)::int AS rows, pg_size_pretty(pg_total_relation_size('mesh_event_log')) AS size FROM mesh_event_log`;
    process.stderr.write(
      `R1 seed: ${table!.rows} rows (${table!.size} with indexes), inserted in ${(inserted / 1000).toFixed(1)} s, analysed in ${((performance.now() - started - inserted) / 1000).toFixed(1)} s; since ${first!.cursor}\n`,
    );
    return first!.cursor;
  } finally {
    await db.end();
  }
}

/**
 * W8: how many tasks hold a transcript, how many outputs each, of how many bytes of content; how
 * many clients open one at once (client i opens task i % TRANSCRIPT_TASKS), and how many opens
 * one at a time are timed. 200 tasks of 10,000 outputs would be a log of ~1.5 GB; 20 tasks keep
 * it near 170 MB, and the server reads a page per subscription whoever else reads the same task,
 * so 10 clients on a task cost it what 10 tasks would (PostgreSQL's cache is warmer, see BENCHMARKS.md).
 */
const TRANSCRIPT_TASKS = scaled(20);
const TRANSCRIPT_EVENTS = scaled(10_000);
const TRANSCRIPT_CLIENTS = scaled(200);
const TRANSCRIPT_OPENS = scaled(100);
const TRANSCRIPT_CONTENT_BYTES = 500;
/** W8's tasks start here in tasks.json: clear of R1's, which may share the log in one run. */
const TRANSCRIPT_FIRST_TASK = 1000;

/**
 * W8's log: TRANSCRIPT_EVENTS outputs for each of TRANSCRIPT_TASKS tasks, interleaved as
 * publishers running side by side would log them (output g of every task, then g + 1), in one
 * `INSERT … SELECT generate_series`. Output g's content is g in 5 digits, a space, then filler to
 * TRANSCRIPT_CONTENT_BYTES, so that a reader can check order cheaply. The plugin's own writer logs
 * output 1 of the first task once more, for a task of its own: its row must equal the seeded one
 * (kind, settled owner, payload text byte for byte), or the run stops. Then VACUUM ANALYZE and a
 * checkpoint, as for R1.
 */
async function seedTranscripts(): Promise<Record<string, string>> {
  const db = postgres(url, { max: 1, onnotice: () => {} });
  try {
    await migrateEventLog(db, { tasks: { table: 'tasks' } });
    const seeded = tasks.slice(TRANSCRIPT_FIRST_TASK, TRANSCRIPT_FIRST_TASK + TRANSCRIPT_TASKS);
    const reference = tasks[TRANSCRIPT_FIRST_TASK + TRANSCRIPT_TASKS]!;
    const filler = TRANSCRIPT_CONTENT_BYTES - 6;
    const started = performance.now();
    await db`
      INSERT INTO mesh_event_log (kind, task_id, owner_id, owner_given, payload)
      SELECT 'output', t.task_id, t.owner_id, true,
             ('{"messageType":"assistant","content":"' || lpad(g::text, 5, '0') || ' ' || repeat('x', ${filler}::int) || '","isPartial":false}')::json
      FROM generate_series(1, ${TRANSCRIPT_EVENTS}::int) g
      CROSS JOIN unnest(${seeded.map((t) => t.taskId)}::uuid[], ${seeded.map((t) => t.ownerId)}::uuid[]) WITH ORDINALITY AS t(task_id, owner_id, n)
      ORDER BY g, t.n`;
    const inserted = performance.now() - started;
    const content = `00001 ${'x'.repeat(filler)}`;
    const writer = new Writer(db, { publishTimeoutMs: 30_000, schema: 'public', tasks: undefined });
    await writer.publish({
      kind: 'output',
      event: {
        taskId: reference.taskId,
        ownerId: reference.ownerId,
        messageType: 'assistant',
        content,
        toolName: undefined,
        toolInput: undefined,
        isError: undefined,
        costUsd: undefined,
        durationMs: undefined,
        isPartial: false,
      },
    });
    const compared = await db<{ task: string; kind: string; owner: string; given: boolean; payload: string }[]>`
      SELECT task_id::text AS task, kind, owner_id::text AS owner, owner_given AS given, payload::text AS payload
      FROM mesh_event_log WHERE task_id = ANY(${[seeded[0]!.taskId, reference.taskId]}::uuid[]) AND payload->>'content' = ${content}`;
    const mine = compared.find((row) => row.task === seeded[0]!.taskId);
    const real = compared.find((row) => row.task === reference.taskId);
    const same =
      mine !== undefined &&
      real !== undefined &&
      mine.owner === seeded[0]!.ownerId &&
      real.owner === reference.ownerId &&
      mine.kind === real.kind &&
      mine.given === real.given &&
      mine.payload === real.payload;
    if (!same) throw new Error(`W8 seed: the seeded row is not what a publish writes: ${JSON.stringify({ mine, real })}`);
    const counts = await db<{ n: number }[]>`
      SELECT count(*)::int AS n FROM mesh_event_log WHERE kind = 'output' AND task_id = ANY(${seeded.map((t) => t.taskId)}::uuid[]) GROUP BY task_id`;
    if (counts.length !== seeded.length || counts.some((c) => c.n !== TRANSCRIPT_EVENTS))
      throw new Error('W8 seed: not every task has its outputs');
    await db`VACUUM ANALYZE mesh_event_log`;
    await db`CHECKPOINT`.catch(() => {});
    const [table] = await db<{ rows: number; size: string }[]>`
      SELECT count(*)::int AS rows, pg_size_pretty(pg_total_relation_size('mesh_event_log')) AS size FROM mesh_event_log`;
    process.stderr.write(
      `W8 seed: ${seeded.length} × ${TRANSCRIPT_EVENTS} outputs; the log now ${table!.rows} rows (${table!.size} with indexes), inserted in ${(inserted / 1000).toFixed(1)} s; ` +
        `a publish writes the same row (${real!.payload.length} B of payload)\n`,
    );
    return {
      BENCH_TRANSCRIPT_FIRST: String(TRANSCRIPT_FIRST_TASK),
      BENCH_TRANSCRIPT_TASKS: String(TRANSCRIPT_TASKS),
      BENCH_TRANSCRIPT_EVENTS: String(TRANSCRIPT_EVENTS),
      BENCH_TRANSCRIPT_CLIENTS: String(TRANSCRIPT_CLIENTS),
      BENCH_TRANSCRIPT_OPENS: String(TRANSCRIPT_OPENS),
    };
  } finally {
    await db.end();
  }
}

/** One server process of `peer` (the primary of `workers` workers, if any), resolved once it listens; `stop` ends it. */
async function startServer(peer: PeerName, bus: BenchBus, env: Record<string, string> = {}, workers = 0) {
  const port = await freePort();
  const flags = process.env.BENCH_SERVER_FLAGS?.split(' ').filter(Boolean) ?? [];
  const server = spawn(process.execPath, [...flags, '--expose-gc', '--import', 'tsx', 'bench/server.ts', peer], {
    env: { ...process.env, ...env, DATABASE_URL: url, PORT: String(port), BENCH_BUS: bus, BENCH_WORKERS: String(workers) },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    server.stdout.on('data', (chunk: Buffer) => chunk.toString().includes('ready') && resolve());
    server.once('exit', (code) => reject(new Error(`${peer} server exited (${code})`)));
  });
  const stop = async () => {
    server.kill('SIGTERM');
    await new Promise((r) => server.once('exit', r));
  };
  return { port, pid: server.pid!, stop };
}

/** BENCH_MESH_OPTIONS with `extra` under the user's own (theirs win). */
const meshOptions = (extra: object) => ({
  BENCH_MESH_OPTIONS: JSON.stringify({ ...extra, ...JSON.parse(process.env.BENCH_MESH_OPTIONS ?? '{}') }),
});

async function runOne(column: string, workload: string): Promise<Record<string, number | string | boolean>> {
  const { peer, workers } = variant(column);
  const resumable = workload === 'W2' && REPLAY_PEERS.includes(peer);
  // W6: the clients on B, the publisher on A, events between them only through PostgreSQL.
  // R1: one server on the PostgreSQL bus, started after the log is seeded (it reads on from the head).
  // W8: the same, on the plugin's defaults (retention keeps 10,000 per task, a replay sends up to 10,000).
  // W2 with resume: the memory ring holds the events of its resumed subscribes (one seen, then
  // RESUMED_EVENTS to replay, for each task; bench/load.ts), and some to spare.
  // The cluster variants: N workers on the PostgreSQL bus, as the example server's WORKERS=N.
  const replay =
    workload === 'R1'
      ? { BENCH_REPLAY_SINCE: await seedReplay(), BENCH_REPLAY_TASKS: String(REPLAY_TASKS), BENCH_REPLAY_EVENTS: String(REPLAY_EVENTS) }
      : workload === 'W8'
        ? await seedTranscripts()
        : undefined;
  const servers =
    workers > 0
      ? [await startServer(peer, 'postgres', {}, workers)]
      : workload === 'W6'
        ? [await startServer(peer, 'postgres'), await startServer(peer, 'postgres')]
        : workload === 'W8'
          ? [await startServer(peer, 'postgres')]
          : replay
            ? [await startServer(peer, 'postgres', meshOptions({ retentionPerTask: 1_000_000 }))]
            : resumable
              ? [await startServer(peer, 'memory', meshOptions({ historySize: (RESUMED_EVENTS + 2) * TARGETED_CLIENTS }))]
              : [await startServer(peer, 'memory')];
  try {
    const ports = servers.map((s) => String(s.port));
    const out = execFileSync(
      process.execPath,
      ['--import', 'tsx', 'bench/load.ts', peer, workload, ports[0]!, tasksFile, values.scale, ports.at(-1)!],
      {
        env: {
          ...process.env,
          ...replay,
          ...(resumable ? { BENCH_RESUMED_EVENTS: String(RESUMED_EVENTS) } : {}),
          ...(workers > 0 ? { BENCH_WORKERS: String(workers) } : {}),
          BENCH_SERVER_PID: String(servers[0]!.pid),
          ...(postmasterPid ? { BENCH_POSTMASTER_PID: postmasterPid } : {}),
        },
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'inherit'],
        maxBuffer: 1 << 20,
      },
    );
    return JSON.parse(out.trim().split('\n').pop()!);
  } finally {
    await Promise.all(servers.map((s) => s.stop()));
  }
}

type Result = Record<string, number | string | boolean>;
/** Per workload and column, one result per repeat. */
const results = new Map<string, Result[]>();
const record = (key: string, r: Result) => results.set(key, [...(results.get(key) ?? []), r]);
for (const workload of workloads) {
  // W7 (not in the default list): many sockets, several generator processes (bench/w7/driver.ts).
  if (workload === 'W7') {
    // W7 runs each peer in one process ((a)) and the example server's workers ((b)): no -wN columns.
    if (peers.some((column) => variant(column).workers > 0)) throw new Error('W7 takes plain peer names');
    const w7 = await runW7({ url, scale: Number(values.scale), peers: peers as PeerName[], scratch, startServer });
    for (const [key, r] of w7) record(key, r as Result);
    continue;
  }
  for (let repeat = 0; repeat < repeats; repeat++) {
    for (const column of peers) {
      const { peer, workers } = variant(column);
      if (workers > 0 && !WORKER_WORKLOADS.includes(workload)) continue;
      if (workload === 'W6' && !BUS_PEERS.includes(peer)) continue;
      if ((workload === 'R1' || workload === 'W8') && !REPLAY_PEERS.includes(peer)) continue;
      const r = await runOne(column, workload);
      record(`${workload}/${column}`, r);
      process.stderr.write(`${workload} ${column}: ${JSON.stringify(r)}\n`);
    }
  }
}

// The table: one row per measure, one column per peer, then each mesh column's ratio to each other peer.
type Row = {
  label: string;
  workload: string;
  key: string;
  /** The other peers' measure, where mesh's has no counterpart in them (a resume they cannot do). */
  othersKey?: string;
  better: 'higher' | 'lower';
  format: (v: number) => string;
};
const fmt = (digits: number) => (v: number) => (Number.isFinite(v) ? v.toLocaleString('en-US', { maximumFractionDigits: digits }) : 'n/a');
const rows: Row[] = [
  { label: 'W1 broadcast, deliveries/s', workload: 'W1', key: 'perSecond', better: 'higher', format: fmt(0) },
  { label: 'W2 connect storm ms (≤500 handshakes in flight)', workload: 'W2', key: 'connectMs', better: 'lower', format: fmt(0) },
  { label: 'W2 targeted, subscribe storm ms', workload: 'W2', key: 'stormMs', better: 'lower', format: fmt(0) },
  { label: 'W2 reconnect storm ms (connect + subscribe)', workload: 'W2', key: 'reconnectMs', better: 'lower', format: fmt(0) },
  {
    label: `W2 reconnect, since + ${RESUMED_EVENTS} events each, ms (others: plain reconnect)`,
    workload: 'W2',
    key: 'resumeMs',
    othersKey: 'reconnectMs',
    better: 'lower',
    format: fmt(0),
  },
  { label: 'W2 targeted, deliveries/s', workload: 'W2', key: 'perSecond', better: 'higher', format: fmt(0) },
  { label: 'W3 output, MiB/s', workload: 'W3', key: 'mibPerSecond', better: 'higher', format: fmt(1) },
  { label: 'W4 memory, RSS KiB/conn', workload: 'W2', key: 'rssPerConnection', better: 'lower', format: (v) => fmt(1)(v / 1024) },
  { label: 'W4 memory, heap KiB/conn', workload: 'W2', key: 'heapPerConnection', better: 'lower', format: (v) => fmt(1)(v / 1024) },
  { label: 'W5 latency p50 ms', workload: 'W5', key: 'p50', better: 'lower', format: fmt(2) },
  { label: 'W5 latency p99 ms', workload: 'W5', key: 'p99', better: 'lower', format: fmt(2) },
  { label: 'W6 PostgreSQL A→B, events/s', workload: 'W6', key: 'perSecond', better: 'higher', format: fmt(0) },
  { label: 'W6 PostgreSQL A→B, p50 ms', workload: 'W6', key: 'p50', better: 'lower', format: fmt(2) },
  { label: 'W6 PostgreSQL A→B, p99 ms', workload: 'W6', key: 'p99', better: 'lower', format: fmt(2) },
  { label: 'R1 replay, s until all replayed', workload: 'R1', key: 'replayedMs', better: 'lower', format: (v) => fmt(1)(v / 1000) },
  { label: 'R1 replay, ms until all live', workload: 'R1', key: 'liveMs', better: 'lower', format: fmt(0) },
  { label: 'R1 replay, events/s', workload: 'R1', key: 'perSecond', better: 'higher', format: fmt(0) },
  { label: 'R1 replay, server RSS before MiB', workload: 'R1', key: 'rssBefore', better: 'lower', format: (v) => fmt(1)(v / 2 ** 20) },
  { label: 'R1 replay, server peak RSS MiB', workload: 'R1', key: 'rssPeak', better: 'lower', format: (v) => fmt(1)(v / 2 ** 20) },
  { label: 'R1 replay, /healthz p50 ms', workload: 'R1', key: 'healthzP50', better: 'lower', format: fmt(2) },
  { label: 'R1 replay, /healthz p99 ms', workload: 'R1', key: 'healthzP99', better: 'lower', format: fmt(2) },
  { label: 'R1 replay, /healthz max ms', workload: 'R1', key: 'healthzMax', better: 'lower', format: fmt(2) },
  { label: 'W8 open over WS, first event p50 ms', workload: 'W8', key: 'wsFirstP50', better: 'lower', format: fmt(1) },
  { label: 'W8 open over WS, first event p99 ms', workload: 'W8', key: 'wsFirstP99', better: 'lower', format: fmt(1) },
  { label: 'W8 open over WS, last event p50 ms', workload: 'W8', key: 'wsLastP50', better: 'lower', format: fmt(1) },
  { label: 'W8 open over WS, last event p99 ms', workload: 'W8', key: 'wsLastP99', better: 'lower', format: fmt(1) },
  { label: 'W8 open over REST, first page p50 ms', workload: 'W8', key: 'restFirstP50', better: 'lower', format: fmt(1) },
  { label: 'W8 open over REST, first page p99 ms', workload: 'W8', key: 'restFirstP99', better: 'lower', format: fmt(1) },
  { label: 'W8 open over REST, last page p50 ms', workload: 'W8', key: 'restLastP50', better: 'lower', format: fmt(1) },
  { label: 'W8 open over REST, last page p99 ms', workload: 'W8', key: 'restLastP99', better: 'lower', format: fmt(1) },
  { label: 'W8 all opening over WS, s to all last', workload: 'W8', key: 'wsStormMs', better: 'lower', format: (v) => fmt(2)(v / 1000) },
  {
    label: 'W8 all opening over WS, RSS idle MiB',
    workload: 'W8',
    key: 'wsStormRssBefore',
    better: 'lower',
    format: (v) => fmt(1)(v / 2 ** 20),
  },
  {
    label: 'W8 all opening over WS, peak RSS MiB',
    workload: 'W8',
    key: 'wsStormRssPeak',
    better: 'lower',
    format: (v) => fmt(1)(v / 2 ** 20),
  },
  { label: 'W8 all then live, ms', workload: 'W8', key: 'liveMs', better: 'lower', format: fmt(0) },
  { label: 'W8 all over REST, s to all last', workload: 'W8', key: 'restStormMs', better: 'lower', format: (v) => fmt(2)(v / 1000) },
  { label: 'W8 all over REST, peak RSS MiB', workload: 'W8', key: 'restStormRssPeak', better: 'lower', format: (v) => fmt(1)(v / 2 ** 20) },
];
const meshes = peers.filter((p) => variant(p).peer === 'mesh');
const others = peers.filter((p) => variant(p).peer !== 'mesh');
const pairs = meshes.flatMap((m) => others.map((o) => [m, o] as const));
const header = ['measure', ...peers, ...pairs.map(([m, o]) => `${m} vs ${o}`)];
const lines = [header];
/** Per measure with more than one repeat: the ratios of mesh to each peer, repeat by repeat. */
const repeatLines: string[] = [];
for (const row of rows.filter((r) => workloads.includes(r.workload))) {
  /** The column's value in each repeat (NaN where it failed). */
  const values = (column: string) =>
    (results.get(`${row.workload}/${column}`) ?? []).map((r) => {
      const v = r[variant(column).peer === 'mesh' ? row.key : (row.othersKey ?? row.key)];
      return typeof v === 'number' && r.complete !== false ? v : NaN;
    });
  const value = (column: string) => median(values(column));
  const times = (mesh: number, v: number) =>
    !Number.isFinite(mesh) || !Number.isFinite(v) || v === 0 ? NaN : row.better === 'higher' ? mesh / v : v / mesh;
  const shown = (x: number) => (Number.isFinite(x) ? `${x.toFixed(2)}×` : 'n/a');
  lines.push([row.label, ...peers.map((p) => row.format(value(p))), ...pairs.map(([m, o]) => shown(times(value(m), value(o))))]);
  for (const [m, o] of pairs) {
    const [ms, os] = [values(m), values(o)];
    if (ms.length > 1 && os.length === ms.length) {
      repeatLines.push(`${row.label}, ${m} vs ${o}, repeat by repeat: ${ms.map((v, i) => shown(times(v, os[i]!))).join(', ')}`);
    }
  }
}
const widths = header.map((_, i) => Math.max(...lines.map((l) => l[i]!.length)));
print(
  `machine: ${cpus().length} × ${cpus()[0]?.model}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}; scale ${values.scale}`,
);
print(
  `ratios: how many times better mesh is (>1× = mesh better); n/a = not measured${repeats > 1 ? `; values: medians of ${repeats} interleaved repeats, ratios: of the medians` : ''}`,
);
print();
for (const [i, l] of lines.entries()) {
  print(`| ${l.map((c, j) => c.padEnd(widths[j]!)).join(' | ')} |`);
  if (i === 0) print(`| ${widths.map((w) => '-'.repeat(w)).join(' | ')} |`);
}
if (repeatLines.length > 0) print(`\n${repeatLines.join('\n')}`);
// How a cluster's connections spread over its workers (bench/load.ts asks them after subscribing).
for (const [key, r] of [...results].flatMap(([key, list]) => list.map((r) => [key, r] as const))) {
  const spread = r.perWorker as unknown as { pid: number; connections: number | null }[] | undefined;
  if (spread) print(`\n${key}: connections per worker ${spread.map((w) => `${w.pid}: ${w.connections ?? 'n/a'}`).join(', ')}`);
}
const incomplete = [...results].flatMap(([key, list]) =>
  list.flatMap((r, i) => {
    const k = repeats > 1 ? `${key}#${i + 1}` : key;
    return [
      ...(r.complete === false ? [k] : []),
      // W2's reconnect phases fail on their own (their measure is then n/a, the rest stands).
      ...Object.keys(r)
        .filter((name) => name.endsWith('Complete') && r[name] === false)
        .map((name) => `${k} (${name.slice(0, -'Complete'.length)})`),
    ];
  }),
);
if (incomplete.length > 0)
  print(`\nincomplete: a check failed or a limit ran out (shown as n/a; details in the JSON line above): ${incomplete.join(', ')}`);

await embedded?.stop();
await rm(scratch, { recursive: true, force: true });
