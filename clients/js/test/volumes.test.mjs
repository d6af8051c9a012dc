// Volumes from the JS SDK against a real server (issue 32): made, written without a sandbox
// (size and SHA-256 checked), mounted read-only into a sandbox, read back, deleted; a write
// whose bytes change on the way (a proxy flips one) is refused whole, as an IntegrityError.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { test } from 'node:test';

import { IntegrityError, NotFoundError, Sandbox, Volume } from '../dist/index.js';

const apiKey = process.env.INSIEN_API_KEY;
const serverUrl = (process.env.INSIEN_URL ?? 'http://localhost:3000').replace(/\/+$/, '');

/** A proxy on 127.0.0.1 to the server that flips the last byte of every PUT body. */
async function corrupting() {
  const proxy = createServer(async (request, response) => {
    const chunks = [];
    for await (const chunk of request) chunks.push(chunk);
    const body = Buffer.concat(chunks);
    if (request.method === 'PUT' && body.length > 0) body[body.length - 1] ^= 1;
    const headers = { ...request.headers };
    delete headers.host;
    delete headers['content-length'];
    const answer = await fetch(serverUrl + request.url, {
      method: request.method,
      headers,
      body: request.method === 'GET' ? undefined : body,
    });
    response.writeHead(answer.status, Object.fromEntries(answer.headers));
    response.end(Buffer.from(await answer.arrayBuffer()));
  });
  await new Promise((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  return { proxy, url: `http://127.0.0.1:${proxy.address().port}` };
}

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
    // The SDK names the SHA-256 of what it sends: bytes changed on the way are refused.
    const { proxy, url } = await corrupting();
    try {
      const through = new Volume(name, { apiKey, baseUrl: url });
      await assert.rejects(through.write('flipped', data), (error) => {
        assert.ok(error instanceof IntegrityError, String(error));
        assert.match(error.message, /nothing was written/);
        return true;
      });
    } finally {
      proxy.close();
    }
    await assert.rejects(volume.read('flipped'), NotFoundError);
  } finally {
    await volume.delete({ force: true });
  }
  await assert.rejects(volume.info(), NotFoundError);
});
