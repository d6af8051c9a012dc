/** What a sandbox's namespaces share: the REST client, the sandbox made on first use, and its
 * RPC connection, opened lazily and held (and re-made across restarts) by RPCConnection. */

import { InsienError, NotFoundError, throwIfAborted } from './errors.js';
import { RPCConnection } from './rpc.js';
import { RestClient } from './transport.js';

export class Session {
  readonly rest: RestClient;
  sandboxId: string | undefined;
  agentUrl: string | undefined;
  readonly owned: boolean;
  destroyed = false;
  private creating: Promise<string> | undefined;
  private connecting: Promise<RPCConnection> | undefined;
  private rpc: RPCConnection | undefined;

  constructor(
    apiKey: string,
    baseUrl: string,
    private readonly options: Record<string, unknown>,
    sandboxId: string | undefined,
    private readonly reconnectWindowMs: number | undefined,
  ) {
    this.rest = new RestClient(baseUrl, apiKey);
    this.sandboxId = sandboxId;
    this.owned = sandboxId === undefined;
    if (sandboxId !== undefined) this.agentUrl = `${wsBase(baseUrl)}/agent/${sandboxId}`;
  }

  /** The sandbox's id, creating it first if this is the first use. */
  create(signal?: AbortSignal): Promise<string> {
    if (this.sandboxId !== undefined) return Promise.resolve(this.sandboxId);
    if (this.destroyed) return Promise.reject(new InsienError('this sandbox has been destroyed'));
    this.creating ??= this.rest
      .json<{ sandboxId: string; agentUrl: string }>('POST', '/sandbox/create', {
        body: Object.keys(this.options).length ? this.options : undefined,
        signal,
      })
      .then((created) => {
        this.sandboxId = created.sandboxId;
        this.agentUrl = created.agentUrl;
        return created.sandboxId;
      })
      .finally(() => {
        this.creating = undefined;
      });
    return this.creating;
  }

  /** The sandbox's WebSocket, creating the sandbox first if this is the first use. */
  async connection(signal?: AbortSignal): Promise<RPCConnection> {
    throwIfAborted(signal);
    if (this.destroyed) throw new InsienError('this sandbox has been destroyed');
    if (this.rpc !== undefined && !this.rpc.closed) return this.rpc;
    this.connecting ??= (async () => {
      await this.create(signal);
      if (this.agentUrl !== undefined && !this.agentUrl.includes('token=')) {
        // An existing sandbox: a URL with a token of its own, since a browser cannot send the
        // key header on a WebSocket. A server without the route keeps the plain URL.
        try {
          const fresh = await this.rest.json<{ agentUrl: string }>(
            'POST', `/sandbox/${encodeURIComponent(this.sandboxId as string)}/connect`, { signal },
          );
          this.agentUrl = fresh.agentUrl;
        } catch (error) {
          if (!(error instanceof NotFoundError)) throw error;
        }
      }
      // After a server restart the token may not verify (a new JWT secret); the key always
      // does, where the platform lets a WebSocket send headers. Where it does not (browsers),
      // the reconnect asks for a fresh token.
      const rpc = new RPCConnection(
        this.agentUrl as string,
        { 'X-API-Key': this.rest.apiKey },
        this.reconnectWindowMs,
        () => this.freshAgentUrl(),
      );
      await rpc.open();
      this.rpc = rpc;
      return rpc;
    })().finally(() => {
      this.connecting = undefined;
    });
    return this.connecting;
  }

  /** A new WebSocket URL with a token for this sandbox (`POST /sandbox/<id>/connect`). */
  private async freshAgentUrl(): Promise<string> {
    const fresh = await this.rest.json<{ agentUrl: string }>(
      'POST', `/sandbox/${encodeURIComponent(this.sandboxId as string)}/connect`,
    );
    this.agentUrl = fresh.agentUrl;
    return fresh.agentUrl;
  }

  closeConnection(): void {
    this.rpc?.close();
    this.rpc = undefined;
  }

  /** Destroy the sandbox and its container. Calling it twice is harmless. */
  async destroy(signal?: AbortSignal): Promise<void> {
    if (this.sandboxId === undefined || this.destroyed) {
      this.destroyed = true;
      return;
    }
    this.destroyed = true;
    this.closeConnection();
    try {
      await this.rest.json('POST', `/sandbox/${this.sandboxId}/destroy`, { signal });
    } catch (error) {
      // A sandbox already destroyed elsewhere is the outcome the caller asked for.
      if (!(error instanceof NotFoundError)) throw error;
    }
  }
}

export function wsBase(baseUrl: string): string {
  return baseUrl.replace(/\/+$/, '').replace(/^https:\/\//, 'wss://').replace(/^http:\/\//, 'ws://');
}
