// Driven by tests/e2e/test_js_sdk.py: two commands are in flight when the server is killed
// and started again; the JS SDK reconnects with its session and both get their answers.
import { Sandbox } from '../../clients/js/dist/index.js';

const sandbox = await Sandbox.create(); // INSIEN_URL and INSIEN_API_KEY from the environment
await sandbox.runCommand('true');
const early = sandbox.commands.run('sleep 1; echo early'); // finishes while the server is down
const late = sandbox.commands.run('sleep 4; echo late'); // finishes after it is back
console.log('RUNNING', sandbox.sandboxId); // the test waits until its sleeps run
const results = { early: (await early).stdout, late: (await late).stdout };
results.after = (await sandbox.commands.run('echo after')).stdout;
console.log(JSON.stringify(results));
await sandbox.destroy();
