/**
 * Debian's PgBouncer (`/usr/sbin/pgbouncer`, installed by `.ci/run`) as a process of the test, in
 * front of the test database's server: its own ini in a scratch folder, on a free port of
 * 127.0.0.1, logging to the test. PgBouncer refuses to run as root, so as root it is told to
 * switch to `nobody` (`-u`), which gets the scratch folder.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chown, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

export const PGBOUNCER = '/usr/sbin/pgbouncer';

/** Why the pooler tests cannot run here, or undefined when they can. */
export function pgbouncerMissing(): string | undefined {
  return existsSync(PGBOUNCER) ? undefined : `${PGBOUNCER} is missing (apt-get install pgbouncer, as .ci/run does)`;
}

export interface Pgbouncer {
  /** `url` with its host and port replaced by PgBouncer's: the same database, through the pooler. */
  through(url: string): string;
  /** What PgBouncer logged so far. */
  output(): string;
  stop(): Promise<void>;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** The ini's value syntax: single-quoted, with quotes doubled. */
const quoted = (value: string) => `'${value.replaceAll("'", "''")}'`;

/**
 * Starts PgBouncer in `poolMode` in front of the server of `serverUrl` (its user and password are
 * what PgBouncer logs in with; clients are not authenticated: `auth_type = any`, on 127.0.0.1).
 */
export async function startPgbouncer(serverUrl: string, poolMode: 'transaction' | 'session' = 'transaction'): Promise<Pgbouncer> {
  const server = new URL(serverUrl);
  const dir = await mkdtemp(path.join(tmpdir(), 'mesh-pgbouncer-'));
  const asRoot = process.getuid?.() === 0;
  const login = [
    `host=${server.hostname}`,
    `port=${server.port || '5432'}`,
    `user=${quoted(decodeURIComponent(server.username || 'postgres'))}`,
    ...(server.password ? [`password=${quoted(decodeURIComponent(server.password))}`] : []),
  ].join(' ');
  // A port taken between our probe and PgBouncer's bind fails its start: try another.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const ini = path.join(dir, 'pgbouncer.ini');
    await writeFile(
      ini,
      [
        '[databases]',
        `* = ${login}`,
        '[pgbouncer]',
        'listen_addr = 127.0.0.1',
        `listen_port = ${port}`,
        'unix_socket_dir =',
        'auth_type = any',
        `pool_mode = ${poolMode}`,
        'max_client_conn = 500',
        'default_pool_size = 20',
        // postgres.js sends these in its startup packet; PgBouncer refuses unknown ones otherwise.
        'ignore_startup_parameters = extra_float_digits,statement_timeout,options',
        'pidfile =',
        'logfile =',
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    if (asRoot) {
      const uid = Number(execFileSync('id', ['-u', 'nobody']).toString());
      const gid = Number(execFileSync('id', ['-g', 'nobody']).toString());
      await chown(dir, uid, gid);
      await chown(ini, uid, gid);
    }
    const child = spawn(PGBOUNCER, [...(asRoot ? ['-u', 'nobody'] : []), ini], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const up = await new Promise<boolean>((resolve) => {
      const onData = (chunk: Buffer) => {
        output += chunk.toString();
        if (output.includes(`listening on 127.0.0.1:${port}`)) resolve(true);
      };
      child.stdout!.on('data', onData);
      child.stderr!.on('data', onData);
      child.once('exit', () => resolve(false));
    });
    if (!up) {
      if (attempt < 5 && /Address already in use/.test(output)) continue;
      await rm(dir, { recursive: true, force: true });
      throw new Error(`pgbouncer did not start: ${output}`);
    }
    return {
      through(url: string) {
        const u = new URL(url);
        u.hostname = '127.0.0.1';
        u.port = String(port);
        return u.toString();
      },
      output: () => output,
      async stop() {
        await stopChild(child);
        await rm(dir, { recursive: true, force: true });
      },
    };
  }
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}
