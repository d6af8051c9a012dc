/**
 * One WebSocket to a sandbox: requests out, answers routed back to their callers by id, and
 * reconnection across server restarts with session resume (docs/protocol.md), as the Python
 * SDK does.
 */

import { AbortError, APIError, ConnectError, RPCError, SandboxClosedError } from './errors.js';
import { EVENT_TYPES } from './protocol.js';
import { openSocket, type SocketLike } from './transport.js';

export type Message = Record<string, unknown> & { type?: string; id?: string };

/** Close codes after which the sandbox may still be there: reconnect. */
const RECONNECT_CODES = new Set([1006, 1011, 1012, 1013]);
/** How long the SDK keeps trying to reach a sandbox whose server went away (a restart). */
export const RECONNECT_WINDOW_MS = 60_000;
const RECONNECT_PAUSE_MS = 250;
/** While calls wait, the connection is pinged this often; no answer as long counts as lost. */
export const PING_INTERVAL_MS = 20_000;

/** Whether a message ends its request: every type but the protocol's events (protocol.ts) does. */
export function isFinal(message: Message): boolean {
  return !EVENT_TYPES.has(String(message.type));
}

export function check(reply: Message): Message {
  if (reply.type === 'error') throw new RPCError(String(reply.code), String(reply.message));
  return reply;
}

const newline = 0x0a;

/** A server message: text is JSON; a binary message is a JSON head line, then raw bytes. */
export function parseMessage(raw: unknown): Message | undefined {
  let parsed: unknown;
  if (typeof raw === 'string') {
    parsed = JSON.parse(raw);
  } else {
    const bytes = raw instanceof ArrayBuffer ? new Uint8Array(raw) : ArrayBuffer.isView(raw)
      ? new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength) : undefined;
    if (bytes === undefined) return undefined;
    const end = bytes.indexOf(newline);
    if (end < 0) return undefined;
    parsed = JSON.parse(new TextDecoder().decode(bytes.subarray(0, end)));
    if (parsed !== null && typeof parsed === 'object') (parsed as Message).data = bytes.slice(end + 1);
  }
  return parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed) ? (parsed as Message) : undefined;
}

interface Waiter {
  onEvent: ((message: Message) => void) | undefined;
  resolve: (message: Message) => void;
  reject: (error: Error) => void;
}

export interface CallOptions {
  /** Every answer that is not the final one (output, spawnResponse, …). */
  onEvent?: (message: Message) => void;
  /** Aborting rejects the call and cancels the request in the sandbox. */
  signal?: AbortSignal | undefined;
}

function randomSession(): string {
  const bytes = new Uint8Array(12);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Multiplexes concurrent requests over one WebSocket, reconnecting across server restarts. */
export class RPCConnection {
  readonly session = randomSession();
  private socket: SocketLike | undefined;
  private readonly waiters = new Map<string, Waiter>();
  private awaitingResume = new Set<string>();
  private ids = 0;
  private closedReason: string | undefined;
  private ready: Promise<void> = Promise.resolve();
  private lostAt: number | undefined;
  private readonly pinger: ReturnType<typeof setInterval>;

  /**
   * @param refreshUrl Asks the server for a new URL with a fresh token (`POST
   *   /sandbox/<id>/connect`): after a restart the old token may not verify (a new JWT secret),
   *   and a browser cannot send the key header instead, nor tell a refusal from a server that
   *   is still down. Rejects with an `APIError` if the sandbox is gone.
   */
  constructor(
    private url: string,
    private readonly headers: Record<string, string>,
    private readonly reconnectWindowMs: number = RECONNECT_WINDOW_MS,
    private readonly refreshUrl?: () => Promise<string>,
  ) {
    this.pinger = setInterval(() => this.checkAlive(), PING_INTERVAL_MS);
    (this.pinger as { unref?: () => void }).unref?.(); // never keeps Node running
  }

  /** A connection that stops answering (a network gone silent, no close) is treated as lost,
   * so waiting calls reconnect, or fail after the window, instead of hanging. */
  private checkAlive(): void {
    const socket = this.socket;
    if (socket === undefined || this.waiters.size === 0 || this.closedReason !== undefined) return;
    const timer = setTimeout(() => {
      if (this.socket !== socket) return;
      this.lost(socket, 1006, 'no answer to a ping');
      socket.close();
    }, PING_INTERVAL_MS);
    this.request({ type: 'ping' }).then(
      () => clearTimeout(timer),
      () => clearTimeout(timer),
    );
  }

  get closed(): boolean {
    return this.closedReason !== undefined;
  }

  /** The first connection: rejects with ConnectError if the sandbox cannot be reached. */
  async open(): Promise<void> {
    this.socket = await this.connectOnce();
  }

  private connectOnce(): Promise<SocketLike> {
    const separator = this.url.includes('?') ? '&' : '?';
    const socket = openSocket(`${this.url}${separator}session=${this.session}`, this.headers);
    socket.binaryType = 'arraybuffer';
    return new Promise<SocketLike>((resolve, reject) => {
      let opened = false;
      let failure = 'the WebSocket closed during its handshake';
      socket.onerror = (event) => {
        const message = (event as { message?: string; error?: Error }).message ?? (event as { error?: Error }).error?.message;
        if (message !== undefined) failure = message;
      };
      socket.onopen = () => {
        opened = true;
        socket.onmessage = (event) => this.route(event.data);
        socket.onclose = (event) => this.lost(socket, event.code, event.reason);
        resolve(socket);
      };
      socket.onclose = (event) => {
        if (!opened) reject(new ConnectError(`WebSocket to the sandbox refused: ${failure} (${event.code})`));
      };
    });
  }

  private route(raw: unknown): void {
    let message: Message | undefined;
    try {
      message = parseMessage(raw);
    } catch {
      return; // not JSON: nothing to route it to
    }
    if (message === undefined) return;
    if (message.type === 'resumed' && message.id === undefined) {
      this.resumed(message);
      return;
    }
    const key = String(message.id);
    const waiter = this.waiters.get(key);
    if (waiter === undefined) return;
    if (isFinal(message)) {
      this.waiters.delete(key);
      waiter.resolve(message);
    } else {
      waiter.onEvent?.(message);
    }
  }

  /** After a reconnect: what was waiting and is neither answered nor running is lost. */
  private resumed(message: Message): void {
    const running = new Set(((message.inFlight as unknown[]) ?? []).map(String));
    for (const key of this.awaitingResume) {
      if (running.has(key)) continue;
      const waiter = this.waiters.get(key);
      if (waiter === undefined) continue;
      this.waiters.delete(key);
      waiter.resolve({ id: key, type: 'error', code: 'LOST', message: 'the request was lost while the connection was down' });
    }
    this.awaitingResume = new Set();
  }

  private lost(socket: SocketLike, code: number, reason: string): void {
    if (this.socket !== socket) return;
    this.socket = undefined;
    if (this.closedReason !== undefined) return;
    if (!RECONNECT_CODES.has(code)) {
      this.fail(`connection closed (${reason ? `${code}: ${reason}` : code})`);
      return;
    }
    this.awaitingResume = new Set(this.waiters.keys());
    this.lostAt ??= Date.now();
    this.ready = this.reconnect();
  }

  private async reconnect(): Promise<void> {
    let stale = false;
    while (this.closedReason === undefined) {
      if (Date.now() - (this.lostAt ?? Date.now()) > this.reconnectWindowMs) {
        this.fail(`connection lost for over ${this.reconnectWindowMs / 1000}s`);
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, RECONNECT_PAUSE_MS));
      if (stale && this.refreshUrl !== undefined) {
        try {
          this.url = await this.refreshUrl();
          stale = false;
        } catch (error) {
          // The sandbox is gone (404) or the key is refused: final. Anything else (no
          // answer, a 5xx) means the server is not back yet.
          if (error instanceof APIError && error.status < 500 && error.status !== 429) {
            this.fail(`cannot reconnect: ${error.message}`);
            return;
          }
          continue;
        }
      }
      try {
        this.socket = await this.connectOnce();
        this.lostAt = undefined;
        return;
      } catch (error) {
        if (this.refreshUrl !== undefined) {
          stale = true; // the server, asked over REST, says whether the sandbox is still there
          continue;
        }
        // A refusal with a status (the sandbox is gone, or the key) is final; a refused TCP
        // connection means the server is not back yet.
        const text = String((error as Error).message);
        if (/Unexpected server response: 4\d\d/.test(text)) {
          this.fail(`cannot reconnect: ${text}`);
          return;
        }
      }
    }
  }

  private fail(reason: string): void {
    clearInterval(this.pinger);
    this.closedReason ??= reason;
    for (const waiter of this.waiters.values()) waiter.reject(new SandboxClosedError(this.closedReason));
    this.waiters.clear();
  }

  /** Close for good (the sandbox object is done with it). */
  close(reason = 'closed by the client'): void {
    const socket = this.socket;
    this.fail(reason);
    this.socket = undefined;
    socket?.close(1000, 'client done');
  }

  private async sendText(text: string): Promise<void> {
    for (;;) {
      if (this.closedReason !== undefined) throw new SandboxClosedError(this.closedReason);
      const socket = this.socket;
      if (socket === undefined || socket.readyState !== 1) {
        await this.ready;
        if (this.socket === undefined && this.closedReason === undefined) {
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        continue;
      }
      socket.send(text);
      return;
    }
  }

  /** Send a request and wait for its final answer (an `error` answer throws RPCError). */
  async call(message: Message, options: CallOptions = {}): Promise<Message> {
    return check(await this.request(message, options));
  }

  /** Send a request; resolves with its final answer, whatever its type. */
  request(message: Message, options: CallOptions = {}): Promise<Message> {
    const { signal, onEvent } = options;
    if (signal?.aborted) return Promise.reject(new AbortError('the operation was aborted', { cause: signal.reason }));
    if (this.closedReason !== undefined) return Promise.reject(new SandboxClosedError(this.closedReason));
    this.ids += 1;
    const id = `r${this.ids}`;
    return new Promise<Message>((resolve, reject) => {
      const onAbort = (): void => {
        if (!this.waiters.delete(id)) return;
        // The caller gave up: the request is cancelled in the sandbox too (a foreground
        // command is killed, a background one is only no longer followed).
        this.send({ type: 'cancel', target: id }).catch(() => undefined);
        reject(new AbortError('the operation was aborted', { cause: signal?.reason }));
      };
      const done = (): void => signal?.removeEventListener('abort', onAbort);
      this.waiters.set(id, {
        onEvent,
        resolve: (answer) => {
          done();
          resolve(answer);
        },
        reject: (error) => {
          done();
          reject(error);
        },
      });
      signal?.addEventListener('abort', onAbort, { once: true });
      this.sendText(JSON.stringify({ ...message, id })).catch((error: Error) => {
        if (this.waiters.delete(id)) {
          done();
          reject(error);
        }
      });
    });
  }

  /** Send without waiting for an answer (used for `cancel`). */
  async send(message: Message): Promise<void> {
    this.ids += 1;
    await this.sendText(JSON.stringify({ ...message, id: `r${this.ids}` }));
  }
}
