// The JS SDK against a real Insien server: INSIEN_URL and INSIEN_API_KEY name it (the pytest
// wrapper tests/e2e/test_js_sdk.py starts one and runs this file with node's test runner).
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';

import {
  AbortError,
  AuthenticationError,
  CommandHandle,
  InsienError,
  NotFoundError,
  RPCError,
  Sandbox,
} from '../dist/index.js';

const apiKey = process.env.INSIEN_API_KEY;
const baseUrl = process.env.INSIEN_URL;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(check, what, ms = 15000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(100);
  }
  assert.fail(`timed out waiting for ${what}`);
}

test('the seed API: created on first use, writeFile, runCommand, getFile, destroy', async () => {
  const sandbox = new Sandbox({ apiKey }); // INSIEN_URL is the default base URL
  assert.equal(sandbox.sandboxId, undefined);
  await sandbox.writeFile('hello.js', "console.log('Hello!');");
  assert.ok(sandbox.sandboxId);
  const result = await sandbox.runCommand('node', ['hello.js']);
  assert.deepEqual([result.stdout, result.stderr, result.exitCode], ['Hello!\n', '', 0]);
  const file = await sandbox.getFile('hello.js');
  assert.deepEqual(file, { content: "console.log('Hello!');", path: 'hello.js' });
  const status = await sandbox.status();
  assert.equal(status.sandboxId, sandbox.sandboxId);
  assert.equal(status.connected, true);
  await sandbox.destroy();
  await sandbox.destroy(); // twice is harmless
  const listed = await Sandbox.list({ apiKey, baseUrl });
  assert.equal(listed.find((info) => info.sandboxId === sandbox.sandboxId)?.state, 'ended');
});

describe('one sandbox, every method', () => {
  let sandbox;
  before(async () => {
    sandbox = await Sandbox.create({ apiKey, baseUrl, metadata: { suite: 'js' }, timeout: 600 });
  });
  after(async () => {
    await sandbox?.destroy();
  });

  test('lifecycle: info, list, connect, setTimeout, keepalive, metrics, pause and resume', async () => {
    const info = await sandbox.info();
    assert.equal(info.sandboxId, sandbox.sandboxId);
    assert.equal(info.state, 'running');
    assert.deepEqual(info.metadata, { suite: 'js' });
    const mine = await Sandbox.list({ apiKey, baseUrl, metadata: { suite: 'js' }, state: 'running' });
    assert.deepEqual(mine.map((one) => one.sandboxId), [sandbox.sandboxId]);
    const again = await Sandbox.connect(sandbox.sandboxId, { apiKey, baseUrl });
    assert.equal((await again.commands.run('echo twin')).stdout, 'twin\n');
    again.close(); // leaves the sandbox running
    assert.equal((await sandbox.info()).state, 'running');
    const longer = await sandbox.setTimeout(900);
    assert.ok(Date.parse(longer.expiresAt) - Date.now() > 800_000);
    assert.equal((await sandbox.keepalive()).state, 'running');
    const metrics = await sandbox.metrics();
    assert.ok(metrics.memoryBytes > 0 && metrics.pids >= 1, JSON.stringify(metrics));
    assert.equal((await sandbox.pause()).state, 'paused');
    assert.equal((await sandbox.resume()).state, 'running');
    assert.ok((await sandbox.ping()) > 0);
    assert.ok(Array.isArray(await sandbox.logs()));
  });

  test('commands.run: shell lines, args, cwd, envs, stdin, timeout and streaming callbacks', async () => {
    const shell = await sandbox.commands.run('echo $((6 * 7)) && echo oops >&2; exit 3');
    assert.deepEqual([shell.stdout, shell.stderr, shell.exitCode], ['42\n', 'oops\n', 3]);
    const direct = await sandbox.commands.run('printf', { args: ['%s|', 'a b', '$HOME'] });
    assert.equal(direct.stdout, 'a b|$HOME|');
    const placed = await sandbox.commands.run('pwd; echo $GREETING', { cwd: '/tmp', envs: { GREETING: 'hi' } });
    assert.equal(placed.stdout, '/tmp\nhi\n');
    const fed = await sandbox.commands.run('tr a-z A-Z', { stdin: 'shout' });
    assert.equal(fed.stdout, 'SHOUT');
    const slow = await sandbox.commands.run('echo started; sleep 30', { timeout: 1 });
    assert.equal(slow.timedOut, true);
    assert.equal(slow.stdout, 'started\n');
    const out = [];
    const err = [];
    const streamed = await sandbox.commands.run('for i in 1 2 3; do echo out$i; echo err$i >&2; done', {
      onStdout: (data) => out.push(data),
      onStderr: (data) => err.push(data),
    });
    assert.equal(out.join(''), 'out1\nout2\nout3\n');
    assert.equal(err.join(''), 'err1\nerr2\nerr3\n');
    assert.equal(streamed.stdout, 'out1\nout2\nout3\n');
  });

  test('background handles: iterate, sendStdin, wait, connect from elsewhere, list and kill', async () => {
    const handle = await sandbox.commands.run('read line; echo got $line; exit 4', { background: true });
    assert.ok(handle instanceof CommandHandle);
    assert.ok(handle.pid > 0);
    await handle.sendStdin('ping\n');
    const chunks = [];
    for await (const chunk of handle) chunks.push(chunk);
    assert.equal(chunks.map((c) => c.data).join(''), 'got ping\n');
    const result = await handle.wait();
    assert.equal(result.exitCode, 4);
    assert.equal(handle.exited, true);

    const ticker = await sandbox.commands.run('for i in $(seq 1 100); do echo tick $i; sleep 0.05; done', { background: true });
    await sleep(300);
    const follower = await Sandbox.connect(sandbox.sandboxId, { apiKey, baseUrl });
    const followed = await follower.commands.connect(ticker.pid); // replays what came before
    await ticker.disconnect();
    await assert.rejects(ticker.wait(), /stopped following/);
    const listed = await sandbox.commands.list();
    assert.ok(listed.some((p) => p.pid === ticker.pid && p.running && p.background));
    const whole = await followed.wait();
    assert.equal(whole.stdout.trim().split('\n').length, 100);
    follower.close();

    const sleeper = await sandbox.commands.run('sleep 600', { background: true });
    assert.equal(await sandbox.commands.kill(sleeper.pid), true);
    assert.equal((await sleeper.wait()).signal, 'SIGKILL');
    const stubborn = await sandbox.commands.run('sleep 600', { background: true });
    assert.ok((await sandbox.commands.killAll()) >= 1);
    await stubborn.wait();
  });

  test('files: write and read text and bytes, list, stat, exists, mkdir, rename, remove', async () => {
    await sandbox.files.write('notes/a.txt', 'alpha');
    assert.equal(await sandbox.files.read('notes/a.txt'), 'alpha');
    const bytes = new Uint8Array([0, 1, 2, 250, 255]);
    await sandbox.files.write('notes/b.bin', bytes);
    assert.deepEqual(await sandbox.files.read('notes/b.bin', { format: 'bytes' }), bytes);
    assert.equal(await sandbox.files.read('notes/a.txt', { offset: 1, length: 3 }), 'lph');
    await sandbox.files.write('notes/a.txt', '!', { append: true });
    assert.equal(await sandbox.files.read('notes/a.txt'), 'alpha!');
    const names = (await sandbox.files.list('notes')).map((e) => e.name).sort();
    assert.deepEqual(names, ['a.txt', 'b.bin']);
    const stat = await sandbox.files.stat('notes/b.bin');
    assert.equal(stat.size, 5);
    assert.equal(stat.type, 'file');
    await sandbox.files.mkdir('deep/er/still');
    assert.equal(await sandbox.files.exists('deep/er/still'), true);
    await sandbox.files.rename('notes/a.txt', 'deep/a.txt');
    assert.equal(await sandbox.files.exists('notes/a.txt'), false);
    await sandbox.files.remove('deep', { recursive: true });
    assert.equal(await sandbox.files.exists('deep'), false);
    await assert.rejects(sandbox.files.read('no/such/file'), (error) => error instanceof RPCError && error.code === 'NOT_FOUND');
  });

  test('files: upload and download raw bytes, whole and streamed', async () => {
    const big = new Uint8Array(3 * 1024 * 1024).map((_, i) => (i * 7) % 256);
    assert.equal(await sandbox.files.upload('up/big.bin', big), big.length);
    assert.deepEqual(await sandbox.files.download('up/big.bin'), big);
    async function* parts() {
      for (let i = 0; i < 4; i += 1) yield new TextEncoder().encode(`part ${i}\n`);
    }
    assert.equal(await sandbox.files.upload('up/parts.txt', parts()), 28);
    assert.equal(await sandbox.files.read('up/parts.txt'), 'part 0\npart 1\npart 2\npart 3\n');
    assert.equal(await sandbox.files.upload('up/blob.txt', new Blob(['from a blob'])), 11);
    const stream = await sandbox.files.download('up/big.bin', { format: 'stream' });
    let total = 0;
    for await (const chunk of stream) total += chunk.length;
    assert.equal(total, big.length);
    await assert.rejects(sandbox.files.download('up/missing.bin'), NotFoundError);
  });

  test('files.watch sees changes made after it resolves', async () => {
    await sandbox.files.mkdir('watched');
    const watch = await sandbox.files.watch('watched');
    await sandbox.files.write('watched/new.txt', 'x');
    const seen = [];
    for await (const event of watch) {
      seen.push(event);
      if (event.name === 'new.txt') break;
    }
    watch.stop();
    assert.ok(seen.some((e) => e.name === 'new.txt' && ['create', 'write'].includes(e.op)), JSON.stringify(seen));
  });

  test('pty: a real terminal, resized, its exit code', async () => {
    let screen = '';
    const decoder = new TextDecoder();
    const terminal = await sandbox.pty.create({ cols: 90, rows: 20, onData: (data) => { screen += decoder.decode(data, { stream: true }); } });
    await sandbox.pty.sendInput(terminal.pid, 'stty size\n');
    await until(() => screen.includes('20 90'), 'the first size');
    await sandbox.pty.resize(terminal.pid, { cols: 50, rows: 10 });
    await sandbox.pty.sendInput(terminal.pid, 'stty size; exit 5\n');
    const result = await terminal.wait();
    assert.equal(result.exitCode, 5);
    assert.ok(screen.includes('10 50'), screen);
  });

  test('an aborted call rejects with AbortError and its command is killed in the sandbox', async () => {
    const controller = new AbortController();
    const running = sandbox.commands.run('sleep 600', { signal: controller.signal });
    await sleep(500);
    controller.abort();
    await assert.rejects(running, AbortError);
    await until(async () => (await sandbox.commands.run('pgrep -x sleep')).exitCode === 1, 'the sleep to be killed');
    const already = AbortSignal.abort();
    await assert.rejects(sandbox.files.read('x', { signal: already }), AbortError);
    await assert.rejects(sandbox.info({ signal: already }), AbortError);
    assert.equal((await sandbox.commands.run('echo fine')).stdout, 'fine\n'); // the connection is fine
  });

  test('snapshot: a template that new sandboxes start from', async () => {
    await sandbox.files.write('kept.txt', 'from the snapshot');
    const template = await sandbox.snapshot();
    const copy = await Sandbox.create({ apiKey, baseUrl, template });
    try {
      assert.equal(await copy.files.read('kept.txt'), 'from the snapshot');
    } finally {
      await copy.destroy();
    }
  });
});

test('ports.forward: a large upload to a server that answers only once it has all of it', async () => {
  // The sandbox reads slowly at first, so the local socket must pause, and then resume when
  // the tunnel drains though the sandbox sends nothing back until the end.
  const size = 32 << 20;
  const sink = [
    'import hashlib, socket, time',
    "listener = socket.create_server(('127.0.0.1', 9000))",
    'conn, _ = listener.accept()',
    'time.sleep(1.5)',
    'digest, n = hashlib.sha256(), 0',
    `while n < ${size}:`,
    '    data = conn.recv(1 << 16)',
    '    if not data:',
    '        break',
    '    digest.update(data)',
    '    n += len(data)',
    "conn.sendall(f'{n} {digest.hexdigest()}'.encode())",
    'conn.close()',
  ].join('\n');
  const sandbox = await Sandbox.create({ apiKey, baseUrl });
  try {
    await sandbox.files.write('sink.py', sink);
    await sandbox.commands.run('python3 sink.py', { background: true });
    const listening = async () => (await sandbox.commands.run("grep -q ':2328 ' /proc/net/tcp")).exitCode === 0;
    await until(listening, 'the sink'); // 9000 is 0x2328; connecting would use up its accept
    const forward = await sandbox.ports.forward(9000);
    try {
      const data = randomBytes(size);
      const expected = `${size} ${createHash('sha256').update(data).digest('hex')}`;
      const answer = await new Promise((resolve, reject) => {
        const socket = net.connect(forward.localPort, forward.localHost);
        let got = '';
        socket.on('data', (chunk) => {
          got += chunk;
        });
        socket.on('end', () => resolve(got));
        socket.on('error', reject);
        socket.write(data);
      });
      assert.equal(answer, expected);
    } finally {
      await forward.close();
    }
  } finally {
    await sandbox.destroy();
  }
});

test('ports.url, ports.forward and network: a preview URL without a key, a local listener, a policy set, read and changed', async () => {
  const sandbox = await Sandbox.create({ apiKey, baseUrl, network: { allowOut: ['pypi.org:443'] } });
  try {
    assert.deepEqual((await sandbox.info()).network, { allowOut: ['pypi.org:443'], denyOut: [], allowPublicTraffic: false });
    assert.match((await sandbox.commands.run('env')).stdout, /HTTPS_PROXY=http:\/\/127\.0\.0\.1:\d+/);
    await sandbox.files.write('site/index.html', '<p>from the sandbox</p>');
    await sandbox.commands.run('python3 -m http.server 8000', { cwd: 'site', background: true });
    const probe = "import socket; socket.create_connection(('127.0.0.1', 8000), timeout=1)";
    await until(async () => (await sandbox.commands.run('python3', { args: ['-c', probe] })).exitCode === 0, 'the server');
    const url = await sandbox.ports.url(8000, { expires: 60 });
    assert.match(url, /insien_token=/);
    const page = await fetch(url); // no key: the URL is enough
    assert.equal(await page.text(), '<p>from the sandbox</p>');
    const forward = await sandbox.ports.forward(8000); // a local listener, like kubectl port-forward
    try {
      const pages = await Promise.all([1, 2, 3].map(async () => (await fetch(`${forward.url}/index.html`)).text()));
      assert.deepEqual(pages, Array(3).fill('<p>from the sandbox</p>'));
    } finally {
      await forward.close();
    }
    await assert.rejects(fetch(`${forward.url}/index.html`)); // closed
    const changed = await sandbox.network.update({ allowPublicTraffic: true });
    assert.deepEqual([changed.allowOut, changed.allowPublicTraffic], [[], true]);
    assert.equal((await fetch(url.split('?')[0])).status, 200); // public now: no token either
    assert.doesNotMatch((await sandbox.commands.run('env')).stdout, /PROXY/);
    assert.deepEqual((await sandbox.network.get()).egress, { connections: 0, refused: 0, bytesOut: 0, bytesIn: 0, secretsUsed: 0 });
    assert.equal((await sandbox.metrics()).egressBytesOut, 0);
  } finally {
    await sandbox.destroy();
  }
});

test('runCode: state kept, streamed output, results, errors, contexts that share nothing', async () => {
  const sandbox = await Sandbox.create({ apiKey, baseUrl });
  try {
    await sandbox.runCode('x = 41');
    const streamed = [];
    const execution = await sandbox.runCode("print('hi')\nx + 1", { onStdout: (text) => streamed.push(text) });
    assert.deepEqual([execution.text, execution.error, execution.logs.stdout, streamed], ['42', null, ['hi\n'], ['hi\n']]);
    const failed = await sandbox.runCode('1 / 0');
    assert.equal(failed.error.name, 'ZeroDivisionError');
    const mine = await sandbox.code.createContext();
    assert.equal((await sandbox.runCode('x', { context: mine })).error.name, 'NameError');
    assert.ok((await sandbox.code.listContexts()).some((context) => context.id === mine.id));
    const slow = await sandbox.runCode('while True: pass', { timeout: 1 });
    assert.deepEqual([slow.timedOut, slow.error.name], [true, 'KeyboardInterrupt']);
    assert.equal((await sandbox.runCode('x')).text, '41'); // the context lived on
    await sandbox.code.removeContext(mine);
    await assert.rejects(sandbox.runCode('1', { context: mine }), (error) => error.code === 'NOT_FOUND');
  } finally {
    await sandbox.destroy();
  }
});

test('errors are typed with the server code and message', async () => {
  const wrongKey = new Sandbox({ apiKey: 'not-a-key', baseUrl });
  await assert.rejects(wrongKey.create(), (error) => {
    assert.ok(error instanceof AuthenticationError && error instanceof InsienError);
    assert.equal(error.status, 401);
    assert.equal(error.code, 'UNAUTHORIZED');
    return true;
  });
  await assert.rejects(Sandbox.connect('no-such-sandbox', { apiKey, baseUrl }), NotFoundError);
  const unreachable = new Sandbox({ apiKey, baseUrl: 'http://127.0.0.1:9' });
  await assert.rejects(unreachable.create(), (error) => error.name === 'ConnectError');
  assert.throws(() => new Sandbox({ apiKey: '', baseUrl }), InsienError);
});

test('the browser entry imports nothing from Node', () => {
  const seen = new Set();
  const visit = (file) => {
    if (seen.has(file)) return;
    seen.add(file);
    const source = readFileSync(new URL(file, new URL('../dist/', import.meta.url)), 'utf8');
    for (const [, target] of source.matchAll(/(?:import|export)[^'"]*from\s+['"]([^'"]+)['"]/g)) {
      assert.ok(target.startsWith('./'), `${file} imports ${target}`);
      visit(target.slice(2));
    }
  };
  visit('browser.js');
  assert.ok(seen.size > 5);
  assert.ok(!seen.has('index.js'));
});
