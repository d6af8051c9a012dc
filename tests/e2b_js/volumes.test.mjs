// E2B's Volume API through the stock `e2b` JavaScript SDK (issue 32), run by
// tests/e2e/test_e2b_volumes.py with E2B_VOLUME_API_URL at the server's `/e2b` like the other
// two: a volume made and looked up, files written and read without a sandbox, mounted into a
// sandbox by `volumeMounts`, removed, and the volume destroyed.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { test } from 'node:test'
import { Sandbox, Volume, VolumeFileType, VolumeNotFoundError, VolumePathNotFoundError } from 'e2b'

test('a volume written without a sandbox is seen by one that mounts it', async () => {
  const name = `js-${randomBytes(4).toString('hex')}`
  const volume = await Volume.create(name)
  try {
    assert.ok(volume.volumeId.startsWith('vol_'))
    assert.ok((await Volume.list()).some((one) => one.volumeId === volume.volumeId && one.name === name))
    assert.equal((await Volume.getInfo(volume.volumeId)).name, name)
    const data = randomBytes(100_000)
    const written = await volume.writeFile('/in/data.bin', data)
    assert.equal(written.size, data.length)
    assert.equal(written.type, VolumeFileType.FILE)
    await volume.writeFile('/in/note.txt', 'from node')
    assert.deepEqual(Buffer.from(await volume.readFile('/in/data.bin', { format: 'bytes' })), data)
    assert.deepEqual(
      (await volume.list('/in')).map((entry) => entry.name),
      ['data.bin', 'note.txt'],
    )
    const sbx = await Sandbox.create({ volumeMounts: { '/data': volume } })
    try {
      const seen = await sbx.commands.run('cat /data/in/note.txt && echo -n back > /data/reply')
      assert.equal(seen.stdout, 'from node')
    } finally {
      await sbx.kill()
    }
    assert.equal(await volume.readFile('/reply'), 'back')
    await volume.remove('/in')
    await assert.rejects(volume.readFile('/in/note.txt'), VolumePathNotFoundError)
  } finally {
    assert.equal(await Volume.destroy(volume.volumeId), true)
  }
  await assert.rejects(Volume.getInfo(volume.volumeId), VolumeNotFoundError)
})
