// envd 0.6.2+ files through the stock `e2b` JavaScript SDK (issue 29), as E2B's own
// metadata.test.ts and watch.test.ts use them: metadata written with a file and read back by
// getInfo, list and rename; an overwrite replacing it; watch events with their entry
// (includeEntry) and allowNetworkMounts on a local directory.
import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import { InvalidArgumentError, Sandbox } from 'e2b'

const HOME = '/home/user'
let sbx

before(async () => {
  sbx = await Sandbox.create({ metadata: { suite: 'e2b-js-file-metadata' } })
  // The SDK takes envd's version from the create answer: metadata needs 0.6.2, entries
  // 0.6.3, network mounts 0.6.4, or it refuses them before asking.
  assert.equal(sbx.envdApi.version, '0.6.4')
})

after(async () => {
  await sbx?.kill()
})

test('metadata is written and read back', async () => {
  const metadata = { author: 'mish', purpose: 'upload' }
  const info = await sbx.files.write('js_meta.txt', 'with metadata', { metadata })
  assert.deepEqual(info.metadata, metadata)
  assert.deepEqual((await sbx.files.getInfo('js_meta.txt')).metadata, metadata)
  const octet = await sbx.files.write('js_octet.txt', 'x', { metadata, useOctetStream: true })
  assert.deepEqual(octet.metadata, metadata)
  const plain = await sbx.files.write('js_plain.txt', 'none')
  assert.equal(plain.metadata, undefined)
  assert.equal((await sbx.files.getInfo('js_plain.txt')).metadata, undefined)
  const infos = await sbx.files.writeFiles(
    [
      { path: 'js_multi_1.txt', data: '1' },
      { path: 'js_multi_2.txt', data: '2' },
    ],
    { metadata: { source: 'test-suite' } },
  )
  assert.deepEqual(
    infos.map((i) => [i.path, i.metadata]),
    [
      [`${HOME}/js_multi_1.txt`, { source: 'test-suite' }],
      [`${HOME}/js_multi_2.txt`, { source: 'test-suite' }],
    ],
  )
})

test('listings, renames and overwrites', async () => {
  await sbx.files.makeDir('js_list')
  await sbx.files.write('js_list/listed.txt', 'c', { metadata: { tag: 'listed' } })
  const entry = (await sbx.files.list('js_list')).find((e) => e.name === 'listed.txt')
  assert.deepEqual(entry.metadata, { tag: 'listed' })
  await sbx.files.write('js_old.txt', 'c', { metadata: { stage: 'renamed' } })
  assert.deepEqual((await sbx.files.rename('js_old.txt', 'js_new.txt')).metadata, {
    stage: 'renamed',
  })
  await sbx.files.write('js_new.txt', 'second')
  assert.equal((await sbx.files.getInfo('js_new.txt')).metadata, undefined)
})

test('invalid metadata is refused', async () => {
  await assert.rejects(
    sbx.files.write('js_invalid.txt', 'x', { metadata: { 'bad key': 'v' } }),
    InvalidArgumentError,
  )
  await assert.rejects(
    sbx.files.write('js_invalid.txt', 'x', { metadata: { ['k'.repeat(247)]: 'v' } }),
    InvalidArgumentError,
  )
  assert.equal(await sbx.files.exists('js_invalid.txt'), false)
})

test('watch events carry their entry', async () => {
  await sbx.files.makeDir('js_watch')
  await sbx.files.write('js_watch/w.txt', 'before')
  let resolveWritten
  const written = new Promise((resolve) => {
    resolveWritten = resolve
  })
  const handle = await sbx.files.watchDir(
    'js_watch',
    (event) => {
      if (event.type === 'write' && event.name === 'w.txt') resolveWritten(event)
    },
    { includeEntry: true, allowNetworkMounts: true },
  )
  await sbx.files.write('js_watch/w.txt', 'after')
  let timer
  const event = await Promise.race([
    written,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error('no write event')), 15000)
    }),
  ]).finally(() => clearTimeout(timer))
  await handle.stop()
  assert.equal(event.entry.name, 'w.txt')
  assert.equal(event.entry.path, `${HOME}/js_watch/w.txt`)
  assert.equal(event.entry.type, 'file')
})
