// E2B's control plane as the stock `e2b` JavaScript SDK sees it (issue 29), run by
// tests/e2e/test_e2b_fidelity_control.py: a sandbox killed under a command is said to be gone,
// connect never shortens a running sandbox's life, the list is newest first by default.
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { test } from 'node:test'
import { Sandbox, TimeoutError } from 'e2b'

test('a sandbox killed under a streaming command is said to have ended', async () => {
  const sbx = await Sandbox.create()
  const handle = await sbx.commands.run('sleep 60', { background: true })
  await Sandbox.kill(sbx.sandboxId)
  await assert.rejects(handle.wait(), (error) => {
    assert.ok(error instanceof TimeoutError, String(error))
    assert.match(error.message, /killed or reached its end of life/)
    return true
  })
})

test('connect extends a running sandbox and never shortens it', async () => {
  const sbx = await Sandbox.create({ timeoutMs: 300_000 })
  try {
    await Sandbox.connect(sbx.sandboxId, { timeoutMs: 10_000 })
    const left = (await Sandbox.getInfo(sbx.sandboxId)).endAt.getTime() - Date.now()
    assert.ok(left > 200_000, `${left} ms left`)
  } finally {
    await sbx.kill()
  }
})

test('the list is newest first unless asked otherwise', async () => {
  const tag = randomUUID()
  const made = []
  try {
    for (let i = 0; i < 2; i++) made.push(await Sandbox.create({ metadata: { jsorder: tag } }))
    const ids = made.map((s) => s.sandboxId)
    const query = { metadata: { jsorder: tag } }
    const newest = await Sandbox.list({ query }).nextItems()
    assert.deepEqual(newest.map((s) => s.sandboxId), [...ids].reverse())
    const oldest = await Sandbox.list({ query, order: 'asc' }).nextItems()
    assert.deepEqual(oldest.map((s) => s.sandboxId), ids)
  } finally {
    for (const sbx of made) await sbx.kill()
  }
})
