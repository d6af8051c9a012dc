// Files through the stock `e2b` JavaScript SDK behave as on E2B's envd (issue 29): paths are
// answered absolute, removing what is not there succeeds, a watcher sees an upload write the
// file, deep listings are depth-first, and a symlink is described by where it leads.
import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import { Sandbox } from 'e2b'

const HOME = '/home/user'
let sbx

before(async () => {
  sbx = await Sandbox.create({ metadata: { suite: 'e2b-js-fidelity-files' } })
})

after(async () => {
  await sbx?.kill()
})

test('an upload answers the absolute path', async () => {
  assert.equal((await sbx.files.write('test_write.txt', 'x')).path, `${HOME}/test_write.txt`)
  assert.equal((await sbx.files.write('~/tilde.txt', 't')).path, `${HOME}/tilde.txt`)
  const many = await sbx.files.write([
    { path: 'one.txt', data: '1' },
    { path: 'sub/two.txt', data: '2' },
  ])
  assert.deepEqual(
    many.map((w) => w.path),
    [`${HOME}/one.txt`, `${HOME}/sub/two.txt`],
  )
})

test('removing what is not there succeeds', async () => {
  await sbx.files.remove('non_existing_file.txt')
  await sbx.files.remove('/tmp/no/such/dir')
})

test('a watcher sees an upload write the file itself', async () => {
  await sbx.files.makeDir('jswatch')
  await sbx.files.write('jswatch/watched.txt', 'before')
  const seen = []
  let resolveSeen
  const arrived = new Promise((resolve) => {
    resolveSeen = resolve
  })
  const handle = await sbx.files.watchDir(`${HOME}/jswatch`, (event) => {
    seen.push(`${event.type}:${event.name}`)
    if (seen.includes('write:watched.txt')) resolveSeen()
  })
  await sbx.files.write('jswatch/watched.txt', 'after')
  let timer
  await Promise.race([
    arrived,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`only saw ${seen}`)), 15000)
    }),
  ]).finally(() => clearTimeout(timer))
  await handle.stop()
  assert.deepEqual(
    seen.filter((e) => !e.endsWith(':watched.txt')),
    [],
  )
})

test('a deep listing is depth-first', async () => {
  for (const sub of ['a/a1', 'a/a2', 'b/b1']) await sbx.files.makeDir(`tree/${sub}`)
  await sbx.files.write('tree/file.txt', 'f')
  const listed = await sbx.files.list('tree', { depth: 2 })
  assert.deepEqual(
    listed.map((e) => e.path),
    ['a', 'a/a1', 'a/a2', 'b', 'b/b1', 'file.txt'].map((rel) => `${HOME}/tree/${rel}`),
  )
})

test('a symlink is described by where it leads', async () => {
  await sbx.files.write('links/test.txt', 'Hello')
  await sbx.commands.run('ln -s test.txt link.txt && ln -s .. up', { cwd: `${HOME}/links` })
  const link = await sbx.files.getInfo('links/link.txt')
  assert.equal(link.type, 'file')
  assert.equal(link.symlinkTarget, `${HOME}/links/test.txt`)
  const up = await sbx.files.getInfo('links/up')
  assert.equal(up.type, 'dir')
  assert.equal(up.symlinkTarget, HOME)
})
