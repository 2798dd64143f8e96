/** `npm run asyncapi`: writes openapi/asyncapi.yaml; a test fails when the committed file is stale. */
import { writeFile } from 'node:fs/promises';
import { ASYNCAPI_FILE, asyncApiDocument } from './asyncapi-document.js';

await writeFile(ASYNCAPI_FILE, asyncApiDocument());
process.stdout.write(`wrote ${ASYNCAPI_FILE.pathname}\n`);
