/**
 * The container files, checked with what runs here (no Docker engine does): the Dockerfile
 * through dockerfile-utils' validator and against what the image must be, docker-compose.yml
 * against what the scale-out demo needs. README "Docker" says what was and was not run.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { validate } from 'dockerfile-utils';
import { parse } from 'yaml';

test('Dockerfile: valid, multi-stage, production dependencies only, non-root, HEALTHCHECK on /healthz', async () => {
  const text = await readFile('Dockerfile', 'utf8');
  assert.deepEqual(
    validate(text).map((d) => `${d.range.start.line + 1}: ${d.message}`),
    [],
  );
  assert.ok((text.match(/^FROM /gm) ?? []).length >= 2, 'multi-stage');
  const deps = text.slice(text.indexOf(' AS deps'), text.lastIndexOf('\nFROM '));
  assert.match(
    deps,
    /npm ci --omit=dev --workspace example --include-workspace-root/,
    "the library's and the example host's production dependencies",
  );
  assert.match(deps, /COPY example\/package\.json/, 'the example workspace is known to the install');
  assert.doesNotMatch(text, /writeFile|> *package\.json/, 'no package.json rewritten: the workspaces say what to install');
  assert.match(deps, /COPY patches/, 'the driver patch reaches the production dependencies');
  const example = JSON.parse(await readFile('example/package.json', 'utf8')) as { dependencies: Record<string, string> };
  assert.ok(example.dependencies['patch-package'], 'patch-package installed there to apply it');
  const stage = (name: string) => {
    const start = text.indexOf(` AS ${name}\n`);
    assert.ok(start > 0, `a stage ${name}`);
    const end = text.indexOf('\nFROM ', start);
    return text.slice(start, end < 0 ? undefined : end);
  };
  const runtime = stage('runtime');
  const external = stage('external');
  const embedded = stage('embedded');
  assert.equal(text.slice(text.lastIndexOf('\nFROM ')), `\nFROM runtime${embedded}`, 'the default target (the last stage) is embedded');
  for (const final of [runtime, external, embedded]) {
    assert.doesNotMatch(final, /npm (ci|install)/, 'nothing installed in the images: they copy the production node_modules');
  }
  for (const final of [external, embedded]) assert.match(final, /^USER node$/m);
  assert.match(runtime, /^HEALTHCHECK .*\n.*\/healthz/m);
  assert.match(runtime, /COPY openapi/, 'the AsyncAPI document the server serves');
  assert.match(runtime, /^CMD \[.*"example\/dist\/main\.js"\]$/m, 'the example host, built');
  assert.match(embedded, /COPY --from=deps \/app\/node_modules/);
  assert.match(embedded, /^ENV DATA_DIR=\/data$/m);
  assert.match(external, /COPY --from=deps-external \/app\/node_modules/);
  assert.match(stage('deps-external'), /npm ci --omit=dev --omit=optional/, 'without the embedded PostgreSQL binaries');
});

test('docker-compose.yml: PostgreSQL and two instances of the server on it', async () => {
  const compose = parse(await readFile('docker-compose.yml', 'utf8'), { merge: true }) as { services: Record<string, any> };
  const servers = Object.entries(compose.services).filter(([, s]) => s.build !== undefined);
  assert.equal(servers.length, 2);
  for (const [name, service] of servers) {
    assert.match(service.environment.DATABASE_URL, /@postgres:5432\//, `${name} uses the compose database (embedded off)`);
    assert.equal(service.depends_on.postgres.condition, 'service_healthy');
    assert.equal(service.build.target, 'external', `${name}: the image without the embedded PostgreSQL`);
  }
  assert.notEqual(servers[0]![1].ports[0], servers[1]![1].ports[0], 'one host port each');
  assert.ok(compose.services.postgres.healthcheck);
});
