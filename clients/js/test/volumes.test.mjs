// Volumes from the JS SDK against a real server (issue 32): made, written without a sandbox
// (size and SHA-256 checked), mounted read-only into a sandbox, read back, deleted.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { test } from 'node:test';

import { NotFoundError, Sandbox, Volume } from '../dist/index.js';

const apiKey = process.env.INSIEN_API_KEY;

test('volumes: create, write without a sandbox, mount, read back, delete', async () => {
  const name = `js-${randomBytes(4).toString('hex')}`;
  const volume = await Volume.create(name, { apiKey, sizeLimit: '4m' });
  try {
    assert.ok((await Volume.list({ apiKey })).some((one) => one.name === name));
    const data = randomBytes(200_000);
    const written = await volume.write('in/data.bin', data);
    assert.deepEqual(written, {
      path: 'in/data.bin',
      bytes: data.length,
      sha256: createHash('sha256').update(data).digest('hex'),
    });
    const sandbox = await Sandbox.create({ apiKey, volumes: [volume.mount('/data', { readOnly: true })] });
    try {
      const summed = await sandbox.commands.run('sha256sum /data/in/data.bin');
      assert.equal(summed.stdout.split(' ')[0], written.sha256);
      const refused = await sandbox.commands.run('touch /data/x');
      assert.notEqual(refused.exitCode, 0);
      assert.deepEqual((await volume.info()).sandboxes, [sandbox.sandboxId]);
    } finally {
      await sandbox.destroy();
    }
    assert.deepEqual(Buffer.from(await volume.read('in/data.bin')), data);
    assert.deepEqual((await volume.listFiles('in')).map((e) => [e.name, e.type]), [['data.bin', 'file']]);
    await volume.remove('in');
    await assert.rejects(volume.read('in/data.bin'), NotFoundError);
  } finally {
    await volume.delete({ force: true });
  }
  await assert.rejects(volume.info(), NotFoundError);
});
