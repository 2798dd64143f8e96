/**
 * The import boundaries the layout promises (README, "Layout"): the core reaches no socket
 * library, web framework, database driver or metrics library, and nothing outside the core but
 * the dependency-free protocol, the bus's interface and the error codes. Checked on the real
 * files, following every import (type-only ones too) from each core file.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const SRC = fileURLToPath(new URL('../src/', import.meta.url));
const IMPORT = /^\s*(?:import|export)\s[^'"]*?from\s+['"]([^'"]+)['"]|^\s*import\s+['"]([^'"]+)['"]/gm;

/** Every specifier a file imports or re-exports from. */
function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  return [...text.matchAll(IMPORT)].map((m) => (m[1] ?? m[2])!);
}

/** The files reachable from `start` through relative imports, and the packages they import. */
function closure(start: string[]): { files: Set<string>; packages: Map<string, string> } {
  const files = new Set<string>();
  const packages = new Map<string, string>();
  const queue = [...start];
  for (let file = queue.pop(); file !== undefined; file = queue.pop()) {
    if (files.has(file)) continue;
    files.add(file);
    for (const specifier of importsOf(file)) {
      if (specifier.startsWith('.')) queue.push(path.resolve(path.dirname(file), specifier.replace(/\.js$/, '.ts')));
      else if (!specifier.startsWith('node:')) packages.set(specifier, path.relative(SRC, file));
    }
  }
  return { files, packages };
}

const coreFiles = readdirSync(path.join(SRC, 'core'))
  .filter((f) => f.endsWith('.ts'))
  .map((f) => path.join(SRC, 'core', f));

test('the core imports no socket library, web framework, database driver or metrics library', () => {
  const { packages } = closure(coreFiles);
  const forbidden = /^(ws|fastify|fastify-plugin|@fastify\/.*|postgres|pg|prom-client|pino)(\/|$)/;
  const found = [...packages].filter(([name]) => forbidden.test(name)).map(([name, from]) => `${name} (from ${from})`);
  assert.deepEqual(found, []);
});

test('the core reaches outside itself only for the protocol, the bus interface and the error codes', () => {
  const { files } = closure(coreFiles);
  const allowed = (file: string) => {
    const relative = path.relative(SRC, file);
    return relative.startsWith('core/') || relative.startsWith('protocol/') || relative === 'bus/bus.ts' || relative === 'errors.ts';
  };
  assert.deepEqual(
    [...files].filter((f) => !allowed(f)).map((f) => path.relative(SRC, f)),
    [],
  );
});

test('only the ws adapter knows ws and @fastify/websocket', () => {
  const knowing: string[] = [];
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else if (entry.name.endsWith('.ts') && importsOf(full).some((s) => s === 'ws' || s === '@fastify/websocket'))
        knowing.push(path.relative(SRC, full));
    }
  };
  walk(SRC);
  // The client (src/client/) uses ws as Node's WebSocket; the example host is not in src/.
  assert.deepEqual(knowing.filter((f) => !f.startsWith('client/') && !f.startsWith('server/')).sort(), ['transport/ws.ts']);
});
