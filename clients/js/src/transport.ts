/**
 * The two ways out: `fetch` for REST, and a WebSocket per sandbox. Browsers have both; Node 20
 * lacks a global WebSocket, so the Node entry plugs in the `ws` package (see index.ts).
 */

import { ConnectError, errorFromResponse, throwIfAborted, AbortError } from './errors.js';

/** The part of the WHATWG WebSocket the SDK uses; `ws` and browsers both provide it. */
export interface SocketLike {
  binaryType: string;
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

/** Opens a WebSocket; `headers` are sent where the platform allows it (not in browsers). */
export type SocketFactory = (url: string, headers: Record<string, string>) => SocketLike;

let factory: SocketFactory | undefined;

/** Choose how WebSockets are opened (the Node entry installs `ws` when Node has none). */
export function useWebSocket(open: SocketFactory): void {
  factory = open;
}

export function openSocket(url: string, headers: Record<string, string>): SocketLike {
  if (factory !== undefined) return factory(url, headers);
  const Native = (globalThis as { WebSocket?: new (url: string) => SocketLike }).WebSocket;
  if (Native === undefined) {
    throw new ConnectError('no WebSocket implementation: install `ws`, or use Node 22+ or a browser');
  }
  return new Native(url);
}

export interface RequestOptions {
  body?: unknown;
  params?: Record<string, string>;
  signal?: AbortSignal | undefined;
}

/** REST calls with the API key; an error answer throws its typed APIError. */
export class RestClient {
  constructor(
    readonly baseUrl: string,
    readonly apiKey: string,
  ) {}

  url(path: string, params?: Record<string, string>): string {
    const url = new URL(this.baseUrl.replace(/\/+$/, '') + path);
    for (const [name, value] of Object.entries(params ?? {})) url.searchParams.set(name, value);
    return url.toString();
  }

  /** A raw fetch: the answer if it is a success, its typed error otherwise. */
  async fetch(method: string, path: string, init: RequestInit & { params?: Record<string, string> } = {}): Promise<Response> {
    throwIfAborted(init.signal ?? undefined);
    const { params, headers, ...rest } = init;
    let response: Response;
    try {
      response = await fetch(this.url(path, params), {
        ...rest,
        method,
        headers: { 'X-API-Key': this.apiKey, ...(headers as Record<string, string> | undefined) },
      });
    } catch (error) {
      if (init.signal?.aborted) throw new AbortError('the request was aborted', { cause: error });
      throw new ConnectError(`cannot reach Insien at ${this.baseUrl}: ${String(error)}`, { cause: error });
    }
    if (!response.ok) throw await errorFromResponse(response);
    return response;
  }

  async json<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    const init: RequestInit & { params?: Record<string, string> } = { signal: options.signal ?? null };
    if (options.params !== undefined) init.params = options.params;
    if (options.body !== undefined) {
      init.body = JSON.stringify(options.body);
      init.headers = { 'Content-Type': 'application/json' };
    }
    const response = await this.fetch(method, path, init);
    const text = await response.text();
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new ConnectError(`unexpected answer from ${path}: ${text.slice(0, 200)}`);
    }
  }
}
