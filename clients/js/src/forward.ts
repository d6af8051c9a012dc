/** `sandbox.ports.forward(port)` in Node: a local TCP listener whose every connection reaches
 * `port` inside the sandbox, each over its own WebSocket (`/sandbox/<id>/ports/<port>/tcp`),
 * like `kubectl port-forward`. Node only (browsers cannot listen): the Node entry installs it. */

import net from 'node:net';

import WebSocket from 'ws';

import type { ForwardTarget, Forward } from './network.js';

const HIGH_WATER = 4 * 1024 * 1024;
const LOW_WATER = 1024 * 1024;

export async function forward(target: ForwardTarget, localPort: number, localHost: string): Promise<Forward> {
  const url = `${target.baseUrl.replace(/^http/, 'ws')}/sandbox/${target.sandboxId}/ports/${target.port}/tcp`;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.pause(); // nothing is read before the sandbox's end is there to take it
    const tunnel = new WebSocket(url, { headers: { 'X-API-Key': target.apiKey }, maxPayload: 64 * 1024 * 1024 });
    const end = (): void => {
      socket.destroy();
      if (tunnel.readyState === WebSocket.OPEN || tunnel.readyState === WebSocket.CONNECTING) tunnel.terminate();
    };
    // Local bytes wait while more than HIGH_WATER is queued for the sandbox (it reads slower),
    // and flow again once a send has been flushed and less than LOW_WATER is left: the
    // sandbox may have nothing to say meanwhile, so its answers cannot be what resumes them.
    const flushed = (): void => {
      if (socket.isPaused() && tunnel.bufferedAmount < LOW_WATER) socket.resume();
    };
    tunnel.on('open', () => {
      socket.on('data', (chunk: Buffer) => {
        tunnel.send(chunk, flushed);
        if (tunnel.bufferedAmount > HIGH_WATER) socket.pause();
      });
      socket.resume();
    });
    tunnel.on('message', (data: Buffer) => {
      if (!socket.write(data)) {
        tunnel.pause();
        socket.once('drain', () => tunnel.resume());
      }
    });
    tunnel.on('close', () => socket.end());
    tunnel.on('error', end);
    tunnel.on('unexpected-response', end);
    socket.on('error', end);
    socket.on('close', () => {
      sockets.delete(socket);
      if (tunnel.readyState === WebSocket.OPEN) tunnel.close(1000);
      else if (tunnel.readyState === WebSocket.CONNECTING) tunnel.terminate();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(localPort, localHost, () => resolve());
  });
  const address = server.address() as net.AddressInfo;
  return {
    localHost,
    localPort: address.port,
    url: `http://${localHost.includes(':') ? `[${localHost}]` : localHost}:${address.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}
