/**
 * The package as a host gets it: `npm pack` holds dist/ with its type declarations, the README and
 * the licence, nothing else; installed into a scratch Fastify app of its own (test/fixtures/
 * host-app), it type-checks (skipLibCheck off: our declarations included) and exchanges frames.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';
import { scratchDirectory } from '../example/src/embedded-postgres.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';

const run = promisify(execFile);
const root = path.resolve('.');
let scratch: string;
let db: TestDatabase;
let tarball: string;
let files: string[];

before(async () => {
  scratch = await scratchDirectory('pack');
  db = await createTestDatabase();
  // prepack builds dist/ first.
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', scratch], { cwd: root, maxBuffer: 16 << 20 });
  const [packed] = JSON.parse(stdout.slice(stdout.indexOf('['))) as { filename: string; files: { path: string }[] }[];
  tarball = path.join(scratch, packed!.filename);
  files = packed!.files.map((f) => f.path);
});
after(async () => {
  await db.drop();
  await rm(scratch, { recursive: true, force: true });
});

test('the tarball holds dist/ with declarations, the README, the licence and package.json: nothing else', () => {
  const outside = files.filter((f) => !f.startsWith('dist/') && !['package.json', 'README.md', 'PROTOCOL.md', 'LICENSE'].includes(f));
  assert.deepEqual(outside, []);
  for (const needed of ['dist/index.js', 'dist/index.d.ts', 'dist/client/index.js', 'dist/client/index.d.ts', 'README.md', 'LICENSE']) {
    assert.ok(files.includes(needed), needed);
  }
  assert.deepEqual(
    files.filter((f) => /^dist\/(server|web)\/|\.map$|\.test\.|\.data|key/i.test(f)),
    [],
  );
});

test('nothing of the example host (example/: its server, dashboard, scripts, dependencies) is in the tarball', async () => {
  assert.deepEqual(
    files.filter((f) => /^example\/|^dist\/(server|web)\/|\.(html|css)$/.test(f)),
    [],
  );
  // None of its modules, under any folder of dist/.
  const modules = new Set((await readdir(path.join(root, 'example/src'))).map((f) => f.replace(/\.ts$/, '')));
  assert.deepEqual(
    files.filter((f) => modules.has(path.basename(f).replace(/\.(js|d\.ts)$/, ''))),
    [],
  );
  // The packed manifest: no list of the example's packages, and none of them as a dependency.
  const { stdout } = await run('tar', ['-xOzf', tarball, 'package/package.json'], { maxBuffer: 16 << 20 });
  const manifest = JSON.parse(stdout) as { dependencies: Record<string, string>; exampleServerDependencies?: unknown };
  assert.equal(manifest.exampleServerDependencies, undefined);
  for (const name of [
    '@fastify/static',
    '@fastify/swagger',
    '@fastify/swagger-ui',
    'close-with-grace',
    'embedded-postgres',
    'mesh-subscriptions-example',
  ]) {
    assert.equal(manifest.dependencies[name], undefined, name);
  }
});

test(
  'a scratch host (its own @fastify/websocket, @fastify/rate-limit, an auth guard) installs the tarball, type-checks against it, and works with the plugin',
  { timeout: 300_000 },
  async () => {
    const app = path.join(scratch, 'host-app');
    await cp(path.join(root, 'test/fixtures/host-app'), app, { recursive: true });
    const ours = JSON.parse(await readFile(path.join(root, 'package.json'), 'utf8')) as {
      dependencies: Record<string, string>;
      devDependencies: Record<string, string>;
    };
    await writeFile(
      path.join(app, 'package.json'),
      JSON.stringify({
        name: 'host-app',
        private: true,
        type: 'module',
        dependencies: {
          'mesh-subscriptions': `file:${tarball}`,
          fastify: ours.devDependencies.fastify,
          '@fastify/websocket': ours.dependencies['@fastify/websocket'],
          '@fastify/rate-limit': ours.devDependencies['@fastify/rate-limit'],
          postgres: '^3.4.0',
          ws: '^8.0.0',
        },
        devDependencies: { '@types/node': ours.devDependencies['@types/node'], '@types/ws': ours.devDependencies['@types/ws'] },
      }),
    );
    await run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', '--ignore-scripts'], { cwd: app, maxBuffer: 16 << 20 });
    await run(process.execPath, [path.join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], { cwd: app });
    const { stdout } = await run(process.execPath, ['out/app.js'], { cwd: app, env: { ...process.env, DATABASE_URL: db.url } });
    const checks = Object.fromEntries(
      stdout
        .trim()
        .split('\n')
        .map((line) => JSON.parse(line) as { check: string; value: unknown })
        .map(({ check, value }) => [check, value]),
    );
    // The package's client, mounted as the README says: through a ticket, and with headers (Node).
    assert.deepEqual(checks.frame, { type: 'taskUpdated', taskId: true, version: 1 });
    assert.equal(checks.headers, 2);
    // Over @fastify/rate-limit's limit (3): its own 429 body, never a 500.
    const tooMany = {
      status: 429,
      body: { statusCode: 429, error: 'Too Many Requests', message: 'Rate limit exceeded, retry in 1 minute' },
    };
    assert.deepEqual(checks.limited, [{ status: 101 }, { status: 101 }, { status: 101 }, tooMany, tooMany, tooMany]);
    // The host's guard answers in its own shape, on the upgrade and on the ticket route.
    const guard = { status: 401, body: { error: 'Unauthorized', message: 'sign in first' } };
    assert.deepEqual(checks.guarded, { upgrade: guard, ticket: guard });
    // Shutdown: 1001 with its reason, though the host registered @fastify/websocket itself.
    assert.deepEqual(checks.shutdown, { state: 'reconnecting', code: 1001, message: 'server shutting down', hostSocketClosed: true });
  },
);

test('the installed package’s command prints the migration (npx mesh-subscriptions migrate --print)', async () => {
  // The app the test above installed the tarball into.
  const { stdout } = await run('npx', ['--no-install', 'mesh-subscriptions', 'migrate', '--print', '--schema', 'mesh', '--tickets'], {
    cwd: path.join(scratch, 'host-app'),
    maxBuffer: 16 << 20,
  });
  assert.match(stdout, /^BEGIN;\n-- mesh-subscriptions: the PostgreSQL bus's objects, schema version \d+, in schema "mesh"\./);
  assert.match(stdout, /CREATE TABLE IF NOT EXISTS "mesh"\.mesh_ws_tickets/);
  assert.match(stdout, /COMMIT;\n$/);
});
