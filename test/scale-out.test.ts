/**
 * Scale-out: two example-server processes on one PostgreSQL, eight concurrent publishers (four
 * through the SQL functions, some of their transactions committing late on purpose, and four
 * through the JS API of a third instance): every subscriber on both processes gets every event it
 * may see, exactly once, in per-task order.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import postgres from 'postgres';
import { createApiKey } from '../example/src/api-keys.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { startServerProcess, type ServerProcess } from './helpers/process.js';
import { startTestServer, type TestServer } from './helpers/server.js';
import { TestClient, type Frame } from './helpers/ws-client.js';

let db: TestDatabase;
let processes: ServerProcess[];
let publisher: TestServer;
before(async () => {
  db = await createTestDatabase();
  processes = await Promise.all([startServerProcess(db.url), startServerProcess(db.url)]);
  publisher = await startTestServer({ db });
});
after(async () => {
  await publisher.close();
  await Promise.all(processes.map((p) => new Promise((resolve) => (p.child.once('exit', resolve), p.child.kill('SIGTERM')))));
  await db.drop();
});

const PUBLISHERS = 8;
const PER_PUBLISHER = 1000;

test(
  '8 concurrent publishers × 1,000 events: every subscriber on both processes gets what it may see, once, in order',
  { timeout: 180_000 },
  async () => {
    const [x, y] = [crypto.randomUUID(), crypto.randomUUID()];
    const keys = {
      admin: await createApiKey(db.sql, { ownerId: null, admin: true }),
      x: await createApiKey(db.sql, { ownerId: x, admin: false }),
      y: await createApiKey(db.sql, { ownerId: y, admin: false }),
    };
    // Each publisher alternates between a task of x and a task of y.
    const tasks = await Promise.all(
      Array.from({ length: PUBLISHERS }, async () => [await publisher.task(x), await publisher.task(y)] as const),
    );
    const yTasks = tasks.map(([, t]) => t);

    const clients: { name: string; client: TestClient; expected: number }[] = [];
    for (const [i, p] of processes.entries()) {
      const admin = await TestClient.connect(p.wsUrl, { 'x-makima-api-key': keys.admin });
      await admin.request({ type: 'subscribeAll' });
      const ofX = await TestClient.connect(p.wsUrl, { 'x-makima-api-key': keys.x });
      await ofX.request({ type: 'subscribeAll' });
      const ofY = await TestClient.connect(p.wsUrl, { 'x-makima-api-key': keys.y });
      for (const taskId of yTasks) await ofY.request({ type: 'subscribe', taskId });
      const all = PUBLISHERS * PER_PUBLISHER;
      clients.push(
        { name: `admin@${i}`, client: admin, expected: all },
        { name: `x@${i}`, client: ofX, expected: all / 2 },
        { name: `y@${i}`, client: ofY, expected: all / 2 },
      );
    }

    const event = (p: number, n: number) => {
      const [taskX, taskY] = tasks[p]!;
      const ofX = n % 2 === 0;
      return { taskId: ofX ? taskX : taskY, ownerId: ofX ? x : y, version: Math.floor(n / 2) + 1 };
    };
    const viaSql = async (p: number) => {
      const sql = postgres(db.url, { max: 1, onnotice: () => {} });
      for (let n = 0; n < PER_PUBLISHER; n++) {
        const e = event(p, n);
        await sql.begin(async (tx) => {
          await tx`SELECT mesh_publish_task_update(${e.taskId}::uuid, ${e.ownerId}::uuid, ${e.version}, 'running', ARRAY['status'], ${`sql-${p}`})`;
          // Some commits come late, after others' later rows: the gap a bigserial cursor falls into.
          if (n % 7 === 0) await tx`SELECT pg_sleep(0.003)`;
        });
      }
      await sql.end();
    };
    const viaJs = async (p: number) => {
      for (let n = 0; n < PER_PUBLISHER; n++) {
        const e = event(p, n);
        await publisher.app.mesh.taskUpdates.publish({ ...e, status: 'running', updatedFields: ['status'], updatedBy: `js-${p}` });
      }
    };
    const publishing = Promise.all(Array.from({ length: PUBLISHERS }, (_, p) => (p < PUBLISHERS / 2 ? viaSql(p) : viaJs(p))));

    const received = await Promise.all(
      clients.map(async ({ client, expected }) => {
        const frames: Frame[] = [];
        for (let i = 0; i < expected; i++) frames.push(await client.next());
        return frames;
      }),
    );
    await publishing;

    for (const [i, { name, client }] of clients.entries()) {
      const perTask = new Map<string, number[]>();
      for (const f of received[i]!) {
        assert.equal(f.type, 'taskUpdated', name);
        perTask.set(String(f.taskId), [...(perTask.get(String(f.taskId)) ?? []), Number(f.version)]);
      }
      const visible = tasks.flatMap(([tx, ty]) => (name.startsWith('admin') ? [tx, ty] : name.startsWith('x') ? [tx] : [ty]));
      assert.deepEqual(new Set(perTask.keys()), new Set(visible), `${name}: exactly the tasks it may see`);
      for (const [taskId, versions] of perTask) {
        assert.deepEqual(
          versions,
          Array.from({ length: PER_PUBLISHER / 2 }, (_, v) => v + 1),
          `${name}: ${taskId} once each, in order`,
        );
      }
      assert.equal(client.pending.length, 0, `${name}: nothing more`);
      await client.close();
    }
  },
);
