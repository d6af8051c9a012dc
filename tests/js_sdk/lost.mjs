// Driven by tests/e2e/test_js_sdk.py: the server is killed while a command runs and does not
// come back; the call fails with SandboxClosedError once the reconnect window has passed.
import { Sandbox } from '../../clients/js/dist/index.js';

const sandbox = await Sandbox.create({ reconnectWindowMs: 2000 });
await sandbox.runCommand('true');
const running = sandbox.commands.run('sleep 60');
console.log('RUNNING');
const started = Date.now();
try {
  await running;
  console.log(JSON.stringify({ error: null }));
} catch (error) {
  console.log(JSON.stringify({ error: error.name, message: error.message, ms: Date.now() - started }));
}
process.exit(0);
