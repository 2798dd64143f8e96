/**
 * The `.env` of the folder `npm start` (or `npm run dev`) was typed in, loaded with Node's own
 * `process.loadEnvFile`. npm runs the server in example/, so the folder is npm's INIT_CWD, not
 * ours. Only under those two scripts: a test or a process manager says what it wants in the
 * environment and must not pick up a developer's `.env`. Variables already set win over the file.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';

export function loadEnvFile(env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (!['start', 'dev'].includes(env.npm_lifecycle_event ?? '') || !env.INIT_CWD) return undefined;
  const file = path.join(env.INIT_CWD, '.env');
  if (!existsSync(file)) return undefined;
  process.loadEnvFile(file);
  return file;
}
