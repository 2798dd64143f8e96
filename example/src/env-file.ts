/**
 * A `.env` file, loaded with Node's own `process.loadEnvFile`, from the folder of the npm command
 * that runs the example's `start`, `dev` or `keys` script (npm's INIT_CWD): the top of the checkout
 * under `npm start`, whose scripts call npm again for the workspace (which runs in example/). Only
 * under those scripts: a test or a process manager says what it wants in the environment and must
 * not pick up a developer's `.env`. Variables already set win over the file.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';

export function loadEnvFile(env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (!['start', 'dev', 'keys'].includes(env.npm_lifecycle_event ?? '') || !env.INIT_CWD) return undefined;
  const file = path.join(env.INIT_CWD, '.env');
  if (!existsSync(file)) return undefined;
  process.loadEnvFile(file);
  return file;
}
