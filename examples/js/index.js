// The seed's example, word for word: `INSIEN_API_KEY=... node index.js` (INSIEN_URL, if the
// server is not at http://localhost:3000).
import { Sandbox } from '@insien/sandbox';

// Initialize with just your API key
const sandbox = new Sandbox({
  apiKey: process.env.INSIEN_API_KEY
});

// Write a file
await sandbox.writeFile('hello.js', "console.log('Hello!');");

// Run a command
const result = await sandbox.runCommand('node', ['--version']);
console.log(result.stdout);

// Read a file
const file = await sandbox.getFile('hello.js');
console.log(file.content);

// Get terminal output
const output = await sandbox.runCommand('ls', ['-la']);
console.log(output.stdout);

// Cleanup when done
await sandbox.destroy();
