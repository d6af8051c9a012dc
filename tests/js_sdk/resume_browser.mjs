// Driven by tests/e2e/test_js_sdk.py: the SDK as a browser uses it, with a WebSocket that
// cannot send the API key header, across a restart after which the server signs tokens with a
// new secret: the reconnect asks for a fresh token, and the calls in flight get their answers.
import WebSocket from '../../clients/js/node_modules/ws/wrapper.mjs'; // the SDK's own dependency
import { Sandbox, useWebSocket } from '../../clients/js/dist/index.js';

useWebSocket((url) => new WebSocket(url)); // no headers: only the URL's token authenticates

const sandbox = await Sandbox.create(); // INSIEN_URL and INSIEN_API_KEY from the environment
await sandbox.runCommand('true');
const late = sandbox.commands.run('sleep 4; echo late'); // finishes after the server is back
console.log('RUNNING', sandbox.sandboxId); // the test waits until its sleeps run
const results = { late: (await late).stdout };
results.after = (await sandbox.commands.run('echo after')).stdout;
console.log(JSON.stringify(results));
await sandbox.destroy();
