// The stock @e2b/code-interpreter SDK against Insien's E2B front (run by
// tests/e2e/test_e2b_js.py with the three E2B variables pointing at a real server).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Sandbox } from '@e2b/code-interpreter';

test('runCode, charts, errors, contexts and JavaScript through the code interpreter SDK', async () => {
  const sandbox = await Sandbox.create(); // its default template: code-interpreter-v1
  try {
    const seen = [];
    await sandbox.runCode('x = 41');
    const execution = await sandbox.runCode("print('hi')\nx + 1", { onStdout: (out) => seen.push(out.line) });
    assert.equal(execution.text, '42');
    assert.deepEqual(execution.logs.stdout, ['hi\n']);
    assert.deepEqual(seen, ['hi\n']);
    const chart = await sandbox.runCode('import matplotlib.pyplot as plt\nplt.plot([1, 2], [3, 4])\nplt.show()');
    assert.ok(chart.results[0].png, 'a PNG chart');
    const failed = await sandbox.runCode('x / 0');
    assert.equal(failed.error.name, 'ZeroDivisionError');
    const context = await sandbox.createCodeContext();
    assert.ok((await sandbox.runCode('x', { context })).error, 'a context of its own');
    assert.ok((await sandbox.listCodeContexts()).some((c) => c.id === context.id));
    await sandbox.restartCodeContext(context);
    await sandbox.removeCodeContext(context);
    assert.ok(!(await sandbox.listCodeContexts()).some((c) => c.id === context.id));
    assert.equal((await sandbox.runCode('[1, 2].map((n) => n * 3)', { language: 'js' })).text, '[ 3, 6 ]');
  } finally {
    await sandbox.kill();
  }
});
