/** `npm run openapi`: writes openapi/openapi.json; a test fails when the committed file is stale. */
import { writeFile } from 'node:fs/promises';
import { OPENAPI_FILE, openApiDocument } from './openapi-document.js';

await writeFile(OPENAPI_FILE, await openApiDocument());
process.stdout.write(`wrote ${OPENAPI_FILE.pathname}\n`);
