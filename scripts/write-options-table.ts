/** `npm run options-table`: writes the README's options table; a test fails when the committed one is stale. */
import { readFile, writeFile } from 'node:fs/promises';
import { README_FILE, withOptionsTable } from './options-table.js';

await writeFile(README_FILE, withOptionsTable(await readFile(README_FILE, 'utf8')));
process.stdout.write(`wrote the options table of ${README_FILE.pathname}\n`);
