/**
 * Stopping the example server as a person at a terminal does (Ctrl-C: SIGINT to the whole
 * foreground process group, npm included) and as an orchestrator does (SIGTERM): `npm run dev` in
 * a process group of its own, with its embedded PostgreSQL (no DATABASE_URL), as `npm start` runs.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { scratchDirectory } from '../example/src/embedded-postgres.js';

type LogLine = { level: number; msg: string; [field: string]: unknown };

const checkout = fileURLToPath(new URL('..', import.meta.url));
let scratch: string;
before(async () => {
  scratch = await scratchDirectory('start-stop');
  // The .env of the folder npm is typed in: the second test's drain comes from it.
  await writeFile(path.join(scratch, '.env'), 'SHUTDOWN_DRAIN_MS=3000\n');
});
after(async () => {
  await rm(scratch, { recursive: true, force: true });
});

interface Run {
  /** `http://127.0.0.1:<port>` */
  url: string;
  pid: number;
  lines: LogLine[];
  /** Everything that was not a JSON log line (npm's own output, stack traces). */
  other: string[];
  /** Resolves with each log line whose message matches, as it arrives. */
  line(pattern: RegExp): Promise<LogLine>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * `npm run dev` (the example server from source), typed in the scratch folder (npm's INIT_CWD,
 * whose .env it loads), in its own process group, until it listens.
 */
async function start(env: Record<string, string>): Promise<Run> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'debug', DATA_DIR: scratch, ...env };
  delete childEnv.DATABASE_URL;
  delete childEnv.INIT_CWD;
  const child = spawn('npm', ['--prefix', path.join(checkout, 'example'), 'run', '-s', 'dev'], {
    cwd: scratch,
    detached: true,
    env: childEnv,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: LogLine[] = [];
  const other: string[] = [];
  const waiting: { pattern: RegExp; resolve: (line: LogLine) => void }[] = [];
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  for (const stream of [child.stdout, child.stderr]) {
    createInterface({ input: stream }).on('line', (text) => {
      let line: LogLine;
      try {
        line = JSON.parse(text) as LogLine;
      } catch {
        other.push(text);
        return;
      }
      lines.push(line);
      for (const w of waiting.filter((w) => w.pattern.test(line.msg))) w.resolve(line);
    });
  }
  const line = (pattern: RegExp) =>
    new Promise<LogLine>((resolve, reject) => {
      const seen = lines.find((l) => pattern.test(l.msg));
      if (seen) return resolve(seen);
      waiting.push({ pattern, resolve });
      void exited.then((how) =>
        reject(
          new Error(
            `exited (${how.code ?? how.signal}) before a line like ${pattern}:\n${lines.map((l) => l.msg).join('\n')}\n${other.join('\n')}`,
          ),
        ),
      );
    });
  const ready = await line(/API docs at/);
  return { url: new URL(String(ready.docs)).origin, pid: child.pid!, lines, other, line, exited };
}

/** The embedded postmaster's pid, from its pid file. */
async function postmasterPid(): Promise<number> {
  return Number((await readFile(path.join(scratch, 'pg', 'postmaster.pid'), 'utf8')).split('\n')[0]);
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

const index = (lines: LogLine[], pattern: RegExp) => lines.findIndex((l) => pattern.test(String(l.msg) + String(l.postgres ?? '')));

test('Ctrl-C (SIGINT to the process group) stops the server, then its database, at once and without an error', async (t) => {
  const run = await start({ SHUTDOWN_DRAIN_MS: '30000' });
  assert.equal((await fetch(`${run.url}/readyz`)).status, 200);
  const postmaster = await postmasterPid();

  const sent = performance.now();
  process.kill(-run.pid, 'SIGINT');
  assert.deepEqual(await run.exited, { code: 0, signal: null }, run.other.join('\n'));
  t.diagnostic(`SIGINT to exit: ${Math.round(performance.now() - sent)} ms`);

  // No socket was open: no drain, though SHUTDOWN_DRAIN_MS is 30 s.
  assert.equal((await run.line(/^shutting down/)).drainMs, 0);
  // The database outlived the server: its shutdown request came after the server had closed.
  const closed = index(run.lines, /^server closed$/);
  const shutdownRequest = index(run.lines, /received fast shutdown request/);
  assert.ok(closed >= 0 && shutdownRequest > closed, run.lines.map((l) => l.msg).join('\n'));
  assert.ok(index(run.lines, /^embedded PostgreSQL stopped$/) > shutdownRequest);
  assert.equal(alive(postmaster), false, 'the embedded PostgreSQL is stopped');
  // Nothing at error level, no connection refused while closing, nothing from npm.
  assert.deepEqual(
    run.lines.filter((l) => l.level >= 50 || /ECONNREFUSED/.test(JSON.stringify(l))),
    [],
  );
  assert.deepEqual(run.other, []);
});

test('SIGTERM keeps the drain: /readyz answers 503 for SHUTDOWN_DRAIN_MS (from .env) before the server closes', async () => {
  const run = await start({});
  assert.equal((await run.line(/^settings from/)).envFile, path.join(scratch, '.env'));
  const postmaster = await postmasterPid();
  process.kill(-run.pid, 'SIGTERM');
  assert.equal((await run.line(/^shutting down/)).drainMs, 3000);
  const readyz = await fetch(`${run.url}/readyz`);
  assert.equal(readyz.status, 503);
  assert.equal(((await readyz.json()) as { code: string }).code, 'SHUTTING_DOWN');
  assert.deepEqual(await run.exited, { code: 0, signal: null }, run.other.join('\n'));
  assert.ok(index(run.lines, /received fast shutdown request/) > index(run.lines, /^server closed$/));
  assert.equal(alive(postmaster), false);
  assert.deepEqual(
    run.lines.filter((l) => l.level >= 50),
    [],
  );
});
