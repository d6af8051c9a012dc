// The stock `e2b` JavaScript SDK, used as its users do: E2B_API_URL, E2B_SANDBOX_URL and
// E2B_API_KEY point it at Insien (set by tests/e2e/test_e2b_js.py), nothing else changes.
import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import { CommandExitError, NotFoundError, Sandbox } from 'e2b'

let sbx

before(async () => {
  sbx = await Sandbox.create({ metadata: { suite: 'e2b-js' }, envs: { GLOBAL_VAR: 'g' } })
})

after(async () => {
  await sbx?.kill()
})

test('commands run in the foreground with envs, cwd and callbacks', async () => {
  const out = []
  const result = await sbx.commands.run('echo $GLOBAL_VAR $LOCAL; pwd; echo oops >&2', {
    envs: { LOCAL: 'l' },
    cwd: '/tmp',
    onStdout: (data) => out.push(data),
  })
  assert.equal(result.exitCode, 0)
  assert.equal(result.stdout, 'g l\n/tmp\n')
  assert.equal(result.stderr, 'oops\n')
  assert.equal(out.join(''), result.stdout)
  await assert.rejects(sbx.commands.run('exit 5'), (error) => {
    assert.ok(error instanceof CommandExitError)
    assert.equal(error.exitCode, 5)
    return true
  })
})

test('background commands: stdin, list, connect, kill', async () => {
  const cat = await sbx.commands.run('cat', { background: true, stdin: true })
  await sbx.commands.sendStdin(cat.pid, 'piped\n')
  await sbx.commands.closeStdin(cat.pid)
  assert.equal((await cat.wait()).stdout, 'piped\n')

  const sleeper = await sbx.commands.run('sleep 300', { background: true })
  const pids = (await sbx.commands.list()).map((p) => p.pid)
  assert.ok(pids.includes(sleeper.pid))
  const follower = await sbx.commands.connect(sleeper.pid)
  assert.equal(await sbx.commands.kill(sleeper.pid), true)
  await assert.rejects(follower.wait(), CommandExitError)
  assert.equal(await sbx.commands.kill(999999), false)
})

test('pty: create, input, resize, kill', async () => {
  const chunks = []
  const decoder = new TextDecoder()
  const terminal = await sbx.pty.create({
    cols: 80,
    rows: 24,
    onData: (data) => chunks.push(decoder.decode(data, { stream: true })),
  })
  await sbx.pty.resize(terminal.pid, { cols: 100, rows: 40 })
  await sbx.pty.sendInput(terminal.pid, new TextEncoder().encode('stty size; echo JS-$((40+2)); exit\n'))
  await terminal.wait()
  const screen = chunks.join('')
  assert.match(screen, /40 100/)
  assert.match(screen, /JS-42/)
  const idle = await sbx.pty.create({ cols: 80, rows: 24, onData: () => {} })
  assert.equal(await sbx.pty.kill(idle.pid), true)
})

test('files: write, read, list, info, make_dir, rename, remove', async () => {
  await sbx.files.write('/home/user/js/hello.txt', 'hello js')
  assert.equal(await sbx.files.read('/home/user/js/hello.txt'), 'hello js')
  const bytes = new Uint8Array(70000).map((_, i) => i % 251)
  await sbx.files.write('/tmp/blob.bin', bytes)
  const back = await sbx.files.read('/tmp/blob.bin', { format: 'bytes' })
  assert.deepEqual(Buffer.from(back), Buffer.from(bytes))
  await sbx.files.write([
    { path: '/tmp/many/a.txt', data: 'A' },
    { path: '/tmp/many/b.txt', data: 'B' },
  ])
  assert.equal((await sbx.commands.run('cat /tmp/many/a.txt /tmp/many/b.txt')).stdout, 'AB')
  assert.equal(await sbx.files.makeDir('/home/user/js/sub'), true)
  assert.equal(await sbx.files.makeDir('/home/user/js/sub'), false)
  const names = (await sbx.files.list('/home/user/js')).map((e) => e.name).sort()
  assert.deepEqual(names, ['hello.txt', 'sub'])
  const info = await sbx.files.getInfo('/home/user/js/hello.txt')
  assert.equal(info.size, 8)
  assert.equal(info.type, 'file')
  await sbx.files.rename('/home/user/js/hello.txt', '/home/user/js/moved.txt')
  assert.equal(await sbx.files.exists('/home/user/js/moved.txt'), true)
  await sbx.files.remove('/home/user/js')
  assert.equal(await sbx.files.exists('/home/user/js'), false)
  await assert.rejects(sbx.files.read('/home/user/nothing-here'), NotFoundError)
})

test('watchDir streams filesystem events', async () => {
  await sbx.files.makeDir('/home/user/jswatch')
  const seen = []
  let resolveSeen
  const arrived = new Promise((resolve) => {
    resolveSeen = resolve
  })
  const handle = await sbx.files.watchDir(
    '/home/user/jswatch',
    (event) => {
      seen.push(`${event.type}:${event.name}`)
      if (seen.includes('remove:x.txt')) resolveSeen()
    },
    { recursive: true },
  )
  await sbx.commands.run('cd /home/user/jswatch && echo 1 > x.txt && rm x.txt')
  let timer
  await Promise.race([
    arrived,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`only saw ${seen}`)), 15000)
    }),
  ]).finally(() => clearTimeout(timer))
  await handle.stop()
  assert.ok(seen.includes('create:x.txt'))
  assert.ok(seen.includes('write:x.txt'))
})

test('lifecycle: info, timeout, list, connect, metrics, kill', async () => {
  const other = await Sandbox.create({ metadata: { suite: 'e2b-js-life' }, timeoutMs: 120_000 })
  try {
    assert.equal(await other.isRunning(), true)
    const info = await other.getInfo()
    assert.deepEqual(info.metadata, { suite: 'e2b-js-life' })
    await other.setTimeout(600_000)
    assert.ok((await other.getInfo()).endAt > info.endAt)
    const paginator = Sandbox.list({ query: { metadata: { suite: 'e2b-js-life' } } })
    const found = await paginator.nextItems()
    assert.deepEqual(found.map((s) => s.sandboxId), [other.sandboxId])
    const again = await Sandbox.connect(other.sandboxId)
    assert.equal((await again.commands.run('echo again')).stdout, 'again\n')
    const metrics = await other.getMetrics()
    assert.ok(metrics.length >= 1)
    assert.ok(metrics[0].memUsed > 0)
    await other.files.write('/home/user/kept.txt', 'kept')
    assert.equal(await other.pause(), true)
    assert.equal((await other.getInfo()).state, 'paused')
    const resumed = await Sandbox.connect(other.sandboxId)
    assert.equal(await resumed.files.read('/home/user/kept.txt'), 'kept')
    const snapshot = await other.createSnapshot()
    const fromSnapshot = await Sandbox.create(snapshot.snapshotId)
    const [fork] = await other.fork()
    try {
      assert.equal(await fromSnapshot.files.read('/home/user/kept.txt'), 'kept')
      assert.ok(fork instanceof Sandbox)
      assert.equal(await fork.files.read('/home/user/kept.txt'), 'kept')
    } finally {
      await fromSnapshot.kill()
      if (fork instanceof Sandbox) await fork.kill()
      for (const snap of await Sandbox.listSnapshots({ sandboxId: other.sandboxId }).nextItems()) {
        await Sandbox.deleteSnapshot(snap.snapshotId)
      }
    }
  } finally {
    await other.kill()
  }
  assert.equal(await other.isRunning(), false)
})
