// E2B's Secrets API and `network.rules` header transforms through the stock `e2b` JavaScript
// SDK (issue 30), run by tests/e2e/test_e2b_network_rules.py: it gives the value to store
// (SECRET_VALUE) and the HTTPS upstream's port (API_PORT), and checks what the upstream got.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { ALL_TRAFFIC, Sandbox, Secret, SecretNotFoundError } from 'e2b'

test('a secret named in a header rule reaches the upstream, never the sandbox', async () => {
  const info = await Secret.create('js-token', process.env.SECRET_VALUE, {
    metadata: { description: 'from node' },
  })
  assert.equal(info.name, 'js_token')
  assert.deepEqual(info.metadata, { description: 'from node' })
  assert.ok(info.secretId.startsWith('sec_'))
  const sbx = await Sandbox.create({
    network: {
      allowOut: ['api.test'],
      denyOut: [ALL_TRAFFIC],
      rules: {
        'api.test': [
          { transform: { headers: { Authorization: `Bearer ${Secret.fill('js-token')}` } } },
        ],
      },
    },
  })
  try {
    const url = `https://api.test:${process.env.API_PORT}/from-node`
    const fetched = await sbx.commands.run(`curl -sS -m 20 -o /dev/null -w '%{http_code}' ${url}`)
    assert.equal(fetched.stdout, '200')
    const env = await sbx.commands.run('env')
    assert.match(env.stdout, /INSIEN_SECRET_JS_TOKEN=insien-secret-/)
    assert.ok(!env.stdout.includes(process.env.SECRET_VALUE))
  } finally {
    await sbx.kill()
  }
  const listed = await Secret.list().nextItems()
  assert.deepEqual(
    listed.map((secret) => secret.name),
    ['js_token'],
  )
  assert.equal(await Secret.destroy(info.secretId), true)
  await assert.rejects(Secret.getInfo('js-token'), SecretNotFoundError)
})
