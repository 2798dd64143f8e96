/**
 * `npx tsx bench/bus-latency.ts [events] [rate]`: where the milliseconds go between a publish on
 * instance A and the sink on instance B of the PostgreSQL bus, stage by stage (W6 without the
 * sockets). Two processes (this script forks itself for B), each with a `PostgresBus` on
 * DATABASE_URL, in a schema of its own (default: an embedded PostgreSQL, as `npm run bench` starts).
 * A publishes `events` updates (default 2,000) at `rate` per second (default 200), one per due
 * time, each naming its sequence number; both processes stamp each stage on the wall clock and
 * the parent joins the stamps. Stages are read off the bus's parts by wrapping their methods in
 * this process only: the bus itself carries no instrumentation.
 *   A: publish() called → writer's statement issued → publish resolved (committed)
 *   B: NOTIFY heard → read issued (none when the NOTIFY carried the rows) → sink
 * BUS_LATENCY_NOTIFY_ROWS=0 measures the default (`postgres.notifyRows` off: bare wake-ups).
 * BUS_LATENCY_DUMP=<file> also writes every event's stamps as JSON, to find where the slow ones waited.
 */
import { fork } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import postgres from 'postgres';
import type { LoggedEvent } from '../src/bus/bus.js';
import { PostgresBus } from '../src/bus/postgres.js';
import { quantile } from './stats.js';
import { DEFAULTS } from '../src/options.js';
import { scratchDirectory, startEmbeddedPostgres } from '../example/src/embedded-postgres.js';

const SCHEMA = 'mesh_bus_latency';
const wall = () => performance.timeOrigin + performance.now();
const role = process.argv[2] === '--b' ? 'B' : 'A';
const scratch = role === 'A' && !process.env.DATABASE_URL ? await scratchDirectory('bus-latency') : undefined;
const embedded = scratch ? await startEmbeddedPostgres({ dir: scratch, log: pino({ level: 'warn' }) }) : undefined;
const url = process.env.DATABASE_URL ?? embedded?.url ?? process.argv[5]!;
const events = Number(process.argv[role === 'B' ? 3 : 2] ?? 2000);
const rate = Number(process.argv[role === 'B' ? 4 : 3] ?? 200);
const TASK = '00000000-0000-4000-8000-000000000001';
const OWNER = '00000000-0000-4000-8000-000000000002';

/** Wraps `object[name]` so that `before` runs first with its arguments. */
function tap(object: any, name: string, before: (...args: any[]) => void): void {
  const original = object[name];
  if (typeof original !== 'function') return;
  object[name] = function (this: unknown, ...args: unknown[]) {
    before(...args);
    return original.apply(this, args);
  };
}

async function bus(sql: postgres.Sql<any>) {
  const notifyRows = process.env.BUS_LATENCY_NOTIFY_ROWS !== '0';
  return new PostgresBus(
    sql,
    { ...DEFAULTS.postgres, schema: SCHEMA, tasks: undefined, tickets: false, notifyRows },
    pino({ level: 'warn' }),
  );
}

if (role === 'B') {
  const sql = postgres(url, { max: 4, onnotice: () => {} });
  const b = await bus(sql);
  const reader = (b as any).reader;
  let heard = 0;
  let issued = 0;
  // The NOTIFY, whichever way the reader takes it (a bare wake-up, or one that carries rows).
  tap(reader, 'announce', () => (heard = wall()));
  tap(reader, 'read', () => (issued = wall()));
  const stamps: Record<number, [heard: number, issued: number, sunk: number]> = {};
  await b.start(async (logged: readonly LoggedEvent[]) => {
    const now = wall();
    for (const e of logged) {
      if (e.kind !== 'update') continue;
      // A read issued before the NOTIFY (a poll) did not wait for it.
      stamps[e.event.version] = [heard, heard > 0 && issued >= heard ? issued : -1, now];
    }
    if (Object.keys(stamps).length >= events) {
      process.send!({ stamps });
    }
  });
  process.send!({ ready: true });
  process.on('message', async () => {
    await b.stop();
    await sql.end();
    process.exit(0);
  });
} else {
  const admin = postgres(url, { max: 1, onnotice: () => {} });
  await admin.unsafe(`DROP SCHEMA IF EXISTS ${SCHEMA} CASCADE`);
  await admin.end();
  // BUS_LATENCY_ASYNC_COMMIT=1: A commits without waiting for the WAL flush (to size the flush; not a mode of the bus).
  const connection = process.env.BUS_LATENCY_ASYNC_COMMIT ? { synchronous_commit: 'off' } : {};
  const sql = postgres(url, { max: 10, onnotice: () => {}, connection });
  const a = await bus(sql);
  // A sinks nothing it measures: it delivers its own events too, as every instance does.
  await a.start(async () => {});
  const writer = (a as any).writer;
  const issued: number[] = [];
  tap(writer, 'insert', (_sql: unknown, entries: { event: { version: number } }[]) => {
    for (const e of entries) issued[e.event.version] = wall();
  });
  const child = fork(fileURLToPath(import.meta.url), ['--b', String(events), String(rate), url], { execArgv: process.execArgv });
  const fromB = new Promise<Record<number, number[]>>((resolve) => {
    child.on('message', (m: any) => {
      if (m.stamps) resolve(m.stamps);
    });
  });
  await new Promise<void>((resolve) => child.once('message', () => resolve()));
  const published: number[][] = [];
  const started = performance.now();
  let i = 0;
  await new Promise<void>((resolve) => {
    const step = () => {
      const due = Math.min(events, Math.floor(((performance.now() - started) * rate) / 1000) + 1);
      while (i < due) {
        const version = ++i;
        const at = wall();
        const p = a.publish({
          kind: 'update',
          event: { taskId: TASK, ownerId: OWNER, version, status: 'running', updatedFields: ['status'], updatedBy: 'bench' },
        });
        const stamp = [at];
        published[version] = stamp;
        void p.then(() => stamp.push(wall()));
      }
      if (i < events) setTimeout(step, 1);
      else resolve();
    };
    step();
  });
  const stamps = await fromB;
  child.send('stop');
  await a.stop();
  await sql.end();
  const rows = Object.entries(stamps).map(([version, [heard, readIssued, sunk]]) => {
    const [at, committed] = published[Number(version)]!;
    return { at: at!, statement: issued[Number(version)]!, committed: committed!, heard: heard!, readIssued: readIssued!, sunk: sunk! };
  });
  const stages: Record<string, number[]> = {
    'publish → statement issued on A': rows.map((r) => r.statement - r.at),
    'statement issued → committed on A': rows.map((r) => r.committed - r.statement),
    'statement issued → NOTIFY heard on B': rows.map((r) => r.heard - r.statement),
    'publish → NOTIFY heard on B': rows.map((r) => r.heard - r.at),
    'NOTIFY heard → read issued': rows.filter((r) => r.readIssued >= 0).map((r) => r.readIssued - r.heard),
    'read issued → sink': rows.filter((r) => r.readIssued >= 0).map((r) => r.sunk - r.readIssued),
    'NOTIFY heard → sink': rows.map((r) => r.sunk - r.heard),
    'publish → sink (total)': rows.map((r) => r.sunk - r.at),
  };
  const q = (values: number[], p: number) =>
    quantile(
      [...values].sort((x, y) => x - y),
      p,
    );
  if (process.env.BUS_LATENCY_DUMP) writeFileSync(process.env.BUS_LATENCY_DUMP, JSON.stringify(rows));
  const read = rows.filter((r) => r.readIssued >= 0).length;
  // Without notices every event is read; a read issued before the NOTIFY (a poll, or one already
  // under way) is not told apart here, so the second count is exact only where notices are sent.
  process.stdout.write(`${rows.length} events at ${rate}/s; ${read} with a read issued after the NOTIFY, ${rows.length - read} without\n`);
  process.stdout.write(`| stage | n | p50 ms | p99 ms |\n| --- | --- | --- | --- |\n`);
  for (const [name, values] of Object.entries(stages)) {
    process.stdout.write(`| ${name} | ${values.length} | ${q(values, 0.5).toFixed(2)} | ${q(values, 0.99).toFixed(2)} |\n`);
  }
  await embedded?.stop();
  if (scratch) await rm(scratch, { recursive: true, force: true });
  process.exit(0);
}
