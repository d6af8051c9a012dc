/** The Node entry: the browser entry, plus the `ws` package where Node has no WebSocket. */

import WebSocket from 'ws';

import { forward } from './forward.js';
import { useForwarder } from './network.js';
import type { SocketLike } from './transport.js';
import { useWebSocket } from './transport.js';

export * from './browser.js';

// Node 20 has no global WebSocket (22 does, but cannot send the API key header that lets a
// session survive a server restart with a new token secret): use `ws` everywhere in Node.
useWebSocket((url, headers) => new WebSocket(url, { headers, maxPayload: 64 * 1024 * 1024 }) as unknown as SocketLike);

// Node can listen: `sandbox.ports.forward(port)` makes local listeners.
useForwarder(forward);
