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
  const final = text.slice(text.lastIndexOf('\nFROM '));
  assert.doesNotMatch(final, /npm (ci|install)/, 'nothing installed in the final stage: it copies the production node_modules');
  assert.match(final, /^USER node$/m);
  assert.match(final, /^HEALTHCHECK .*\n.*\/healthz/m);
  assert.match(final, /COPY openapi/, 'the AsyncAPI document the server serves');
  assert.match(final, /^CMD \[.*"example\/dist\/main\.js"\]$/m, 'the example host, built');
});

test('docker-compose.yml: PostgreSQL and two instances of the server on it', async () => {
  const compose = parse(await readFile('docker-compose.yml', 'utf8'), { merge: true }) as { services: Record<string, any> };
  const servers = Object.entries(compose.services).filter(([, s]) => s.build !== undefined);
  assert.equal(servers.length, 2);
  for (const [name, service] of servers) {
    assert.match(service.environment.DATABASE_URL, /@postgres:5432\//, `${name} uses the compose database (embedded off)`);
    assert.equal(service.depends_on.postgres.condition, 'service_healthy');
  }
  assert.notEqual(servers[0]![1].ports[0], servers[1]![1].ports[0], 'one host port each');
  assert.ok(compose.services.postgres.healthcheck);
});
