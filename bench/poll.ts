/**
 * A watcher of one server process, in a process of its own so that the load generator's busy loop
 * does not add to what it measures: `bench/poll.ts <port> <server pid> [<interval ms>] [<postmaster pid>]`.
 * Every interval it sends `GET /healthz` (on schedule, whether or not the previous one has been
 * answered: a stalled server is charged for every request it keeps waiting) and reads the server's
 * VmRSS and CPU time from /proc, and the whole machine's busy CPU time. On SIGTERM it prints one JSON line: every sample, stamped with wall-clock ms,
 * the server's VmHWM (its peak RSS since it started), and how many requests were still unanswered.
 */
import { readdirSync, readFileSync } from 'node:fs';
import http from 'node:http';

const [portText, pidText, intervalText, postmasterText] = process.argv.slice(2) as [string, string, string?, string?];
const port = Number(portText);
const interval = Number(intervalText ?? 50);
const wallClock = () => performance.timeOrigin + performance.now();
const agent = new http.Agent({ keepAlive: true });

/** kB fields of /proc/<pid>/status, in bytes. */
function status(field: 'VmRSS' | 'VmHWM'): number {
  try {
    const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pidText}/status`, 'utf8'));
    return match ? Number(match[1]) * 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** A process's user + system CPU time, ms, and its parent; undefined once it is gone. */
function stat(pid: string): { cpu: number; parent: string } | undefined {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return { cpu: ((Number(fields[11]) + Number(fields[12])) * 1000) / TICKS, parent: fields[1]! };
  } catch {
    return undefined;
  }
}

/** The server's user + system CPU time, ms. */
const cpu = (): number => stat(pidText)?.cpu ?? NaN;

/**
 * The CPU time of the PostgreSQL the server uses, ms: the postmaster and its children (the
 * backends, the checkpointer…). Backends that ended between samples take theirs along, so this
 * undercounts short connections; the bench's pools hold theirs for the whole run.
 */
function postgresCpu(): number {
  if (postmasterText === undefined) return NaN;
  let total = stat(postmasterText)?.cpu ?? NaN;
  for (const entry of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(entry)) continue;
    const s = stat(entry);
    if (s?.parent === postmasterText) total += s.cpu;
  }
  return total;
}

/** Every core's busy time (all but idle and iowait), ms. */
function machine(): number {
  const [, ...ticks] = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).map(Number);
  const total = ticks.slice(0, 8).reduce((a, b) => a + b, 0);
  return ((total - ticks[3]! - ticks[4]!) * 1000) / TICKS;
}
const TICKS = 100; // USER_HZ

/** [at, server VmRSS bytes, server CPU ms, machine busy CPU ms, PostgreSQL CPU ms (NaN: no postmaster given)] */
const rss: [number, number, number, number, number][] = [];
/** [sent at, ms until the whole answer was in, status (0: failed)] */
const healthz: [number, number, number][] = [];

let unanswered = 0;

function probe(): void {
  unanswered++;
  const sent = wallClock();
  const started = performance.now();
  const request = http.get({ host: '127.0.0.1', port, path: '/healthz', agent }, (response) => {
    response.resume();
    response.on('end', () => {
      unanswered--;
      healthz.push([sent, performance.now() - started, response.statusCode ?? 0]);
    });
  });
  request.on('error', () => {
    unanswered--;
    healthz.push([sent, performance.now() - started, 0]);
  });
}

const timer = setInterval(() => {
  rss.push([wallClock(), status('VmRSS'), cpu(), machine(), postgresCpu()]);
  probe();
}, interval);

process.on('SIGTERM', async () => {
  clearInterval(timer);
  // Requests still out get up to 5 s more; what is unanswered then is counted as such.
  for (let waited = 0; unanswered > 0 && waited < 5000; waited += 10) await new Promise((r) => setTimeout(r, 10));
  process.stdout.write(`${JSON.stringify({ rss, healthz, unanswered, hwm: status('VmHWM') })}\n`, () => process.exit(0));
});
process.stdout.write('ready\n');
