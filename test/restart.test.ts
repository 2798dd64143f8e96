/**
 * PostgreSQL restarted for real (a fast shutdown of the cluster, then a start on the same port),
 * again and again, under two example-server processes that are being published to all the while
 * through their REST API (transactions with an outbox event, and plain publishes):
 *
 * - no server process dies (a driver bug took one down: see README, "The driver patch");
 * - every request is answered (the test records the slowest), with 2xx or with 503 UNAVAILABLE
 *   and a Retry-After: an outage is never a 500;
 * - /readyz answers 200 again once the database is back;
 * - what is published after the last restart, through the API and through SQL, reaches a
 *   WebSocket subscriber of the other process.
 */
import assert from 'node:assert/strict';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { after, before, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import pino from 'pino';
import postgres from 'postgres';
import { createApiKey } from '../example/src/api-keys.js';
import { scratchDirectory, startEmbeddedPostgres, type EmbeddedDatabase } from '../example/src/embedded-postgres.js';
import { migrate } from '../example/src/migrations.js';
import { startServerProcess, type ServerProcess } from './helpers/process.js';
import { TestClient, type Frame } from './helpers/ws-client.js';

const RESTARTS = 5;
const WORKERS_PER_SERVER = 3;

const log = pino({ level: 'silent' });
let scratch: string;
let database: EmbeddedDatabase | undefined;
const servers: ServerProcess[] = [];

before(async () => {
  scratch = await scratchDirectory('restart-test');
  database = await startEmbeddedPostgres({ dir: scratch, log });
});
after(async () => {
  // Their logs, for a failure's post-mortem.
  await mkdir('test-artifacts', { recursive: true });
  await Promise.all(servers.map((s, i) => writeFile(`test-artifacts/restart-server-${i}.log`, s.output())));
  await Promise.all(
    servers.map((s) =>
      s.child.exitCode !== null || s.child.signalCode !== null
        ? undefined
        : new Promise((resolve) => (s.child.once('exit', resolve), s.child.kill('SIGTERM'))),
    ),
  );
  await database?.stop();
  await rm(scratch, { recursive: true, force: true });
});

interface Outcome {
  server: number;
  route: string;
  /** 0: no HTTP answer at all (the process is gone). */
  status: number;
  code?: string;
  retryAfter: string | null;
  ms: number;
}

const alive = (s: ServerProcess) => s.child.exitCode === null && s.child.signalCode === null;

/** Why a process ended: its error lines (the full logs go to test-artifacts/restart-server-*.log). */
const why = (s: ServerProcess) =>
  `exit ${s.child.exitCode ?? s.child.signalCode}:\n` +
  s
    .output()
    .split('\n')
    .filter((line) => /"level":(50|60)/.test(line) && !line.includes('"request failed"'))
    .slice(-5)
    .join('\n');

/** /readyz answers other than 200 seen while waiting, by code. */
const notReady = new Map<string, number>();

/** Polls until /readyz answers 200 (nothing to await instead); the time it took, in ms. */
async function ready(server: ServerProcess): Promise<number> {
  const started = performance.now();
  for (;;) {
    assert.ok(alive(server), `a server process exited, ${why(server)}`);
    const res = await fetch(`${server.url}/readyz`).catch(() => undefined);
    if (res?.status === 200) return performance.now() - started;
    const code = res ? `${res.status} ${((await res.json()) as { code?: string }).code}` : 'no answer';
    notReady.set(code, (notReady.get(code) ?? 0) + 1);
    await delay(50);
  }
}

test(
  `${RESTARTS} PostgreSQL restarts under load: every process stays up, no 500, ready again, events flow after`,
  { timeout: 120_000 },
  async (t) => {
    const port = Number(new URL(database!.url).port);
    const setup = postgres(database!.url, { max: 1, onnotice: () => {} });
    await migrate(setup);
    const ownerId = crypto.randomUUID();
    const key = await createApiKey(setup, { ownerId, admin: false });
    await setup.end();
    servers.push(...(await Promise.all([startServerProcess(database!.url), startServerProcess(database!.url)])));
    const headers = { 'x-makima-api-key': key, 'content-type': 'application/json' };

    const created = await fetch(`${servers[0]!.url}/api/v1/mesh/tasks`, {
      method: 'POST',
      headers,
      body: JSON.stringify({ name: 'restarted' }),
    });
    assert.equal(created.status, 201);
    const task = ((await created.json()) as { id: string }).id;
    const subscriber = await TestClient.connect(servers[0]!.wsUrl, { 'x-makima-api-key': key });
    subscriber.send({ type: 'subscribe', taskId: task });
    subscriber.send({ type: 'subscribeOutput', taskId: task });
    // The creation's own taskUpdated may reach the socket between the two acks: it is not one of them.
    const acks: unknown[] = [];
    while (acks.length < 2) {
      const frame = await subscriber.next();
      if (frame.type !== 'taskUpdated') acks.push(frame);
    }
    assert.deepEqual(acks, [
      { type: 'subscribed', taskId: task },
      { type: 'outputSubscribed', taskId: task },
    ]);

    const outcomes: Outcome[] = [];
    /** Answers (2xx) per server since the last reset: the load goes on between restarts. */
    const answered = [0, 0];
    let publishing = true;
    const routes = [
      { route: 'PATCH /tasks/:id', method: 'PATCH', path: `/api/v1/mesh/tasks/${task}`, body: (n: number) => ({ status: `s${n}` }) },
      {
        route: 'POST /tasks/:id/output',
        method: 'POST',
        path: `/api/v1/mesh/tasks/${task}/output`,
        body: (n: number) => ({ messageType: 'assistant', content: `c${n}` }),
      },
      { route: 'POST /tasks', method: 'POST', path: '/api/v1/mesh/tasks', body: (n: number) => ({ name: `t${n}` }) },
      { route: 'GET /tasks/:id', method: 'GET', path: `/api/v1/mesh/tasks/${task}`, body: () => undefined },
    ];
    async function worker(server: number, offset: number): Promise<void> {
      for (let n = offset; publishing; n++) {
        const { route, method, path, body } = routes[n % routes.length]!;
        const started = performance.now();
        const payload = body(n);
        const outcome: Outcome = { server, route, status: 0, retryAfter: null, ms: 0 };
        try {
          const res = await fetch(`${servers[server]!.url}${path}`, {
            method,
            headers: payload === undefined ? { 'x-makima-api-key': key } : headers,
            body: payload === undefined ? undefined : JSON.stringify(payload),
          });
          const text = await res.text();
          Object.assign(outcome, { status: res.status, retryAfter: res.headers.get('retry-after') });
          if (res.status >= 400) outcome.code = (JSON.parse(text) as { code?: string }).code;
        } catch {
          // No answer: the process is gone, or it cut the connection.
        }
        outcome.ms = performance.now() - started;
        outcomes.push(outcome);
        if (outcome.status >= 200 && outcome.status < 300) answered[server]!++;
        // A process that is gone answers nothing ever again: stop hammering it.
        if (outcome.status === 0) await delay(100);
      }
    }
    const workers = servers.flatMap((_, s) => Array.from({ length: WORKERS_PER_SERVER }, (_, w) => worker(s, w)));

    /** Waits until each server has answered a few requests with a success since the last call. */
    async function underLoad(): Promise<void> {
      answered.fill(0);
      while (answered.some((n) => n < WORKERS_PER_SERVER)) {
        for (const server of servers) assert.ok(alive(server), `a server process exited, ${why(server)}`);
        await delay(20);
      }
    }

    const readyAfterStartMs: number[] = [];
    try {
      for (let restart = 1; restart <= RESTARTS; restart++) {
        await underLoad();
        await database!.stop(); // SIGINT: PostgreSQL's fast shutdown, as `pg_ctl stop -m fast`
        database = await startEmbeddedPostgres({ dir: scratch, log, port });
        const times = await Promise.all(servers.map(ready));
        readyAfterStartMs.push(...times.map(Math.round));
      }
      await underLoad();
    } finally {
      publishing = false;
      await Promise.all(workers);
    }

    const byStatus = Object.entries(
      outcomes.reduce<Record<string, number>>(
        (acc, o) => ((acc[`${o.status}${o.code ? ` ${o.code}` : ''}`] = (acc[`${o.status}${o.code ? ` ${o.code}` : ''}`] ?? 0) + 1), acc),
        {},
      ),
    );
    t.diagnostic(`answers: ${byStatus.map(([k, n]) => `${k} ×${n}`).join(', ')}`);
    t.diagnostic(
      `slowest answer: ${Math.round(Math.max(...outcomes.map((o) => o.ms)))} ms; /readyz 200 after each start: ${readyAfterStartMs.join(', ')} ms`,
    );
    t.diagnostic(`/readyz answers before its 200: ${[...notReady].map(([k, n]) => `${k} ×${n}`).join(', ') || 'none'}`);

    for (const [i, server] of servers.entries()) {
      assert.ok(alive(server), `server ${i} exited during the restarts, ${why(server)}`);
    }
    const wrong = outcomes.filter(
      (o) => !((o.status >= 200 && o.status < 300) || (o.status === 503 && o.code === 'UNAVAILABLE' && o.retryAfter !== null)),
    );
    assert.deepEqual(wrong, [], 'every answer is a success, or 503 UNAVAILABLE with Retry-After');

    // After the last restart: a change through the other process's API, output, and an update
    // published from SQL all reach the subscriber.
    const changed = await fetch(`${servers[1]!.url}/api/v1/mesh/tasks/${task}`, {
      method: 'PATCH',
      headers,
      body: JSON.stringify({ status: 'after-restarts' }),
    });
    assert.equal(changed.status, 200);
    const { version } = (await changed.json()) as { version: number };
    const output = await fetch(`${servers[1]!.url}/api/v1/mesh/tasks/${task}/output`, {
      method: 'POST',
      headers,
      body: JSON.stringify({ messageType: 'assistant', content: 'after-restarts' }),
    });
    assert.equal(output.status, 202);
    const direct = postgres(database!.url, { max: 1, onnotice: () => {} });
    await direct`SELECT mesh_publish_task_update(${task}::uuid, ${ownerId}::uuid, ${version + 1000}, 'from-sql', '{status}', 'sql')`;
    await direct.end();

    const awaited = [
      (f: Frame) => f.type === 'taskUpdated' && f.status === 'after-restarts' && f.version === version,
      (f: Frame) => f.type === 'taskOutput' && f.content === 'after-restarts',
      (f: Frame) => f.type === 'taskUpdated' && f.status === 'from-sql' && f.version === version + 1000,
    ];
    while (awaited.length > 0) {
      const frame = await subscriber.next();
      const i = awaited.findIndex((match) => match(frame));
      if (i !== -1) awaited.splice(i, 1);
    }
    await subscriber.close();
  },
);
