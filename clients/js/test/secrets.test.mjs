// Secrets from the JS SDK against a real server (issue 30): kept, listed without values,
// bound at create (a header) and live (a placeholder), rotated, deleted. It needs a server
// with INSIEN_SECRETS_KEY and test upstreams (tests/e2e/test_secrets_clients.py runs it with
// INSIEN_TEST_SECRETS_API and _PLAIN, `host:port` of an HTTPS and a plain echo upstream);
// without them it skips.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { test } from 'node:test';

import { NotFoundError, Sandbox, Secrets } from '../dist/index.js';

const apiKey = process.env.INSIEN_API_KEY;
const api = process.env.INSIEN_TEST_SECRETS_API;
const plain = process.env.INSIEN_TEST_SECRETS_PLAIN;
const skip = !api || !plain ? 'needs INSIEN_TEST_SECRETS_API and _PLAIN (a server with secrets)' : false;

const fresh = () => `sk-test-${randomBytes(12).toString('hex')}`;

async function curl(sandbox, url, ...flags) {
  const result = await sandbox.commands.run(`curl -sS -m 20 ${flags.join(' ')} '${url}'`, { timeout: 60 });
  return { code: result.exitCode, out: result.stdout + result.stderr };
}

test('secrets: create, list, bind at create and live, rotate, delete', { skip }, async () => {
  const secrets = new Secrets({ apiKey });
  const made = { header: fresh(), rotated: fresh(), placeholder: fresh() };
  writeFileSync(process.env.INSIEN_TEST_SECRETS_MADE ?? '/dev/null', JSON.stringify(made));
  const info = await secrets.create('JS_HEADER', made.header, { description: 'from node' });
  assert.equal(info.version, 1);
  await secrets.create('JS_PLAIN', made.placeholder);
  try {
    const listed = await secrets.list();
    assert.ok(listed.some((one) => one.name === 'JS_HEADER' && one.description === 'from node'));
    assert.ok(!JSON.stringify(listed).includes(made.header));
    const plainHost = plain.split(':')[0];
    const sandbox = await Sandbox.create({
      apiKey,
      network: {
        allowOut: [api, plainHost],
        secrets: [{ secret: 'JS_HEADER', hosts: [api], header: 'Authorization: Bearer {secret}' }],
      },
    });
    try {
      let { code, out } = await curl(sandbox, `https://${api}/js`, '-f');
      assert.equal(code, 0, out);
      assert.equal(JSON.parse(out).headers.authorization, `Bearer ${made.header}`);

      const rotated = await secrets.rotate('JS_HEADER', made.rotated);
      assert.equal(rotated.version, 2);
      ({ code, out } = await curl(sandbox, `https://${api}/js`, '-f'));
      assert.equal(JSON.parse(out).headers.authorization, `Bearer ${made.rotated}`);

      const now = await sandbox.network.get();
      const updated = await sandbox.network.update({
        allowOut: now.allowOut,
        secrets: [...(now.secrets ?? []), { secret: 'JS_PLAIN', hosts: [plainHost] }],
      });
      const placeholder = updated.secrets?.find((one) => one.secret === 'JS_PLAIN')?.placeholder;
      assert.match(placeholder ?? '', /^insien-secret-/);
      const seen = await sandbox.commands.run('printenv INSIEN_SECRET_JS_PLAIN');
      assert.equal(seen.stdout.trim(), placeholder);
      ({ code, out } = await curl(sandbox, `http://${plain}/js`, '-f', '-H "X-Key: $INSIEN_SECRET_JS_PLAIN"'));
      assert.equal(code, 0, out);
      assert.equal(JSON.parse(out).headers['x-key'], made.placeholder);
      assert.equal((await sandbox.network.get()).egress.secretsUsed, 3);

      await secrets.delete('JS_HEADER');
      ({ out } = await curl(sandbox, `https://${api}/js`, '-i'));
      assert.match(out, /HTTP\/1\.1 403 Forbidden/);
    } finally {
      await sandbox.destroy();
    }
  } finally {
    await secrets.delete('JS_PLAIN');
    await secrets.delete('JS_HEADER').catch((error) => assert.ok(error instanceof NotFoundError));
  }
  await assert.rejects(secrets.rotate('JS_HEADER', 'x'), NotFoundError);
});
