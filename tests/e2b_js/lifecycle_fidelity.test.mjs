// E2B's pause variants, auto-resume and signed file URLs as the stock `e2b` JavaScript SDK sees
// them (issue 29), run by tests/e2e/test_e2b_fidelity_lifecycle.py: a pause without memory
// boots the sandbox anew on its files, traffic wakes a sandbox whose lifecycle allows it, and a
// signed URL reads its one file without a key and nothing else.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { Sandbox } from 'e2b'

const sleeping = "python3 -c \"import os; print(any(b'sleep\\x00654' in open(f'/proc/{p}/cmdline', 'rb').read() for p in os.listdir('/proc') if p.isdigit()))\""

test('a pause without memory boots the sandbox anew on its files', async () => {
  const sbx = await Sandbox.create({ timeoutMs: 300_000 })
  try {
    await sbx.files.write('kept.txt', 'kept by the JS SDK')
    await sbx.commands.run('sleep 654', { background: true })
    assert.equal((await sbx.commands.run(sleeping)).stdout.trim(), 'True')
    assert.equal(await sbx.pause({ keepMemory: false }), true)
    assert.equal((await Sandbox.getInfo(sbx.sandboxId)).state, 'paused')
    const resumed = await Sandbox.connect(sbx.sandboxId)
    assert.equal(await resumed.files.read('kept.txt'), 'kept by the JS SDK')
    assert.equal((await resumed.commands.run(sleeping)).stdout.trim(), 'False')
  } finally {
    await sbx.kill()
  }
})

test('traffic resumes a paused sandbox whose lifecycle says autoResume', async () => {
  const sbx = await Sandbox.create({
    timeoutMs: 300_000,
    lifecycle: { onTimeout: 'pause', autoResume: true },
  })
  try {
    assert.deepEqual((await Sandbox.getInfo(sbx.sandboxId)).lifecycle, {
      onTimeout: 'pause',
      autoResume: true,
    })
    await sbx.pause()
    assert.equal((await sbx.commands.run('echo awake')).stdout, 'awake\n')
    assert.equal((await Sandbox.getInfo(sbx.sandboxId)).state, 'running')
  } finally {
    await sbx.kill()
  }
})

test('a signed download URL reads its one file without a key', async () => {
  const sbx = await Sandbox.create({ timeoutMs: 300_000 })
  try {
    await sbx.files.write('signed.txt', 'signed for JS')
    await sbx.files.write('other.txt', 'not through that URL')
    const url = await sbx.downloadUrl('signed.txt', { useSignatureExpiration: 60 })
    const headers = { 'E2b-Sandbox-Id': sbx.sandboxId }
    const read = await fetch(url, { headers })
    assert.equal(read.status, 200)
    assert.equal(await read.text(), 'signed for JS')
    const elsewhere = new URL(url)
    elsewhere.searchParams.set('path', 'other.txt')
    assert.equal((await fetch(elsewhere, { headers })).status, 401)
    const upload = await sbx.uploadUrl('up.txt', { useSignatureExpiration: 60 })
    const form = new FormData()
    form.append('file', new Blob(['uploaded by JS']), 'up.txt')
    const written = await fetch(upload, { method: 'POST', body: form, headers })
    assert.equal(written.status, 200)
    assert.equal(await sbx.files.read('up.txt'), 'uploaded by JS')
  } finally {
    await sbx.kill()
  }
})
