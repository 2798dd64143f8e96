/**
 * Builds the dashboard (web/) into a folder the example server serves: `tsx scripts/build-web.ts
 * <out>` (the example's `npm run build` writes example/dist/web). One bundle, no CDN, nothing
 * fetched at run time. `mesh-subscriptions/client` is bundled from the library's source (esbuild
 * follows the tsconfig `paths`), so the library need not be built first.
 */
import { copyFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const WEB = fileURLToPath(new URL('../web', import.meta.url));

export async function buildWeb(outDir: string): Promise<void> {
  await mkdir(outDir, { recursive: true });
  await build({
    entryPoints: [path.join(WEB, 'app.ts')],
    outfile: path.join(outDir, 'app.js'),
    bundle: true,
    format: 'esm',
    target: 'es2022',
    minify: true,
    sourcemap: true,
    logLevel: 'warning',
  });
  await Promise.all(['index.html', 'style.css'].map((file) => copyFile(path.join(WEB, file), path.join(outDir, file))));
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  await buildWeb(path.resolve(process.argv[2] ?? 'dist/web'));
}
