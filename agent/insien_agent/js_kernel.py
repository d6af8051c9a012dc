"""The JavaScript code context's kernel: the same protocol as kernel.py, run by `node -e`.

Cells run in one `vm` context, so top-level declarations persist between them; the last
expression's value is the main result (`util.inspect` text); SIGINT while a cell runs stops
it (`breakOnSigint`) with a `KeyboardInterrupt` error and keeps the context. Output written
through `process.stdout`/`process.stderr` (console.log included) comes back as stream events;
a child process given the kernel's own stdio writes past them and is not captured.
"""

JS_KERNEL = r"""
'use strict';
const vm = require('vm');
const util = require('util');
const readline = require('readline');

const protocol = process.stdout.write.bind(process.stdout);
const emit = (event) => protocol(JSON.stringify(event) + '\n');
const forward = (name) => (chunk, encoding, callback) => {
  const text = typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8');
  if (text) emit({ type: 'stream', name, text });
  const done = typeof encoding === 'function' ? encoding : callback;
  if (typeof done === 'function') done();
  return true;
};
process.stdout.write = forward('stdout');
process.stderr.write = forward('stderr');

function formats(value) {
  const text = typeof value === 'string' ? `'${value}'` : util.inspect(value, { depth: 4 });
  const data = { text };
  const methods = [
    ['html', '_repr_html_'], ['markdown', '_repr_markdown_'],
    ['svg', '_repr_svg_'], ['json', '_repr_json_'],
  ];
  for (const [name, method] of methods) {
    try {
      if (value && typeof value[method] === 'function') {
        const rendered = value[method]();
        if (rendered !== undefined && rendered !== null) data[name] = rendered;
      }
    } catch (error) { /* an object whose display hook fails has no such format */ }
  }
  return data;
}

const context = vm.createContext({
  console, require, process, Buffer, URL, TextEncoder, TextDecoder,
  setTimeout, setInterval, setImmediate, clearTimeout, clearInterval, clearImmediate,
  module: { exports: {} },
  display: (...values) => values.forEach((value) => {
    emit({ type: 'result', result: { ...formats(value), isMainResult: false } });
  }),
});
let count = 0;

function run(cell) {
  count += 1;
  const saved = {};
  for (const [name, value] of Object.entries(cell.envs || {})) {
    saved[name] = process.env[name];
    process.env[name] = String(value);
  }
  let error = null;
  let value;
  try {
    const script = new vm.Script(String(cell.code || ''), { filename: `<cell ${count}>` });
    value = script.runInContext(context, { breakOnSigint: true, displayErrors: false });
  } catch (thrown) {
    const interrupted = thrown && thrown.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED';
    error = {
      name: interrupted ? 'KeyboardInterrupt' : String((thrown && thrown.name) || 'Error'),
      value: String((thrown && thrown.message) || thrown),
      traceback: String((thrown && thrown.stack) || thrown),
    };
  } finally {
    for (const [name, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  }
  if (error === null && value !== undefined && value !== null) {
    emit({ type: 'result', result: { ...formats(value), isMainResult: true } });
  }
  emit({ type: 'done', executionCount: count, error });
}

process.on('SIGINT', () => {}); // between cells there is nothing to stop
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  let cell;
  try { cell = JSON.parse(line); } catch (error) { return; }
  if (cell && cell.type === 'setup') {  // started ahead of use: the claiming sandbox's variables
    for (const name of Object.keys(process.env)) delete process.env[name];
    Object.assign(process.env, cell.env || {});
    return;
  }
  run(cell);
});
emit({ type: 'ready', pid: process.pid, node: process.version });
"""
