/** `sandbox.ports` and `sandbox.network`: reaching the sandbox's ports from outside, and the
 * sandbox's ways out. Both are REST calls on the sandbox (created on first use). */

import { InsienError } from './errors.js';
import { bindingBody } from './secrets.js';
import type { Abortable, NetworkInfo, NetworkPolicy } from './types.js';

/** How the namespaces reach the server: a REST call on this sandbox (`:id` filled in). */
export type SandboxRest = <T>(method: string, path: string, options: Abortable, body?: unknown) => Promise<T>;

/** What a forward needs to open its WebSockets. */
export interface ForwardTarget {
  baseUrl: string;
  apiKey: string;
  sandboxId: string;
  port: number;
}

/** A local listener reaching a port in the sandbox (`close()` stops it and its connections). */
export interface Forward {
  readonly localHost: string;
  readonly localPort: number;
  /** `http://<localHost>:<localPort>`. */
  readonly url: string;
  close(): Promise<void>;
}

export type Forwarder = (target: ForwardTarget, localPort: number, localHost: string) => Promise<Forward>;

let forwarder: Forwarder | undefined;

/** Install how local listeners are made (the Node entry does; browsers cannot listen). */
export function useForwarder(make: Forwarder): void {
  forwarder = make;
}

export class Ports {
  constructor(
    private readonly rest: SandboxRest,
    private readonly target: (signal?: AbortSignal) => Promise<Omit<ForwardTarget, 'port'>>,
  ) {}

  /** Listen on `localHost:localPort` (0: any free port) and carry every connection to `port`
   * in the sandbox: `const f = await sandbox.ports.forward(8000); fetch(f.url)`. Node only. */
  async forward(port: number, options: Abortable & { localPort?: number; localHost?: string } = {}): Promise<Forward> {
    if (forwarder === undefined) {
      throw new InsienError('ports.forward needs Node (a browser cannot listen): use ports.url');
    }
    const target = await this.target(options.signal);
    return forwarder({ ...target, port }, options.localPort ?? 0, options.localHost ?? '127.0.0.1');
  }

  /** A preview URL for `port`: HTTP and WebSockets to it without a key, for `expires`
   * seconds (default an hour); its first request sets a cookie so a browser can follow the
   * app's links. */
  async url(port: number, options: Abortable & { expires?: number } = {}): Promise<string> {
    const body = { expires: options.expires ?? 3600 };
    return (await this.rest<{ url: string }>('POST', `/sandboxes/:id/ports/${port}/url`, options, body)).url;
  }
}

export class Network {
  constructor(private readonly rest: SandboxRest) {}

  /** The policy and what the sandbox's egress has done (since the server started). */
  get(options: Abortable = {}): Promise<NetworkInfo> {
    return this.rest<NetworkInfo>('GET', '/sandboxes/:id/network', options);
  }

  /** Replace the policy: connections from now on follow it (open ones stay). Commands
   * started after egress is turned on get the proxy variables, and those started after a
   * secret is bound its `INSIEN_SECRET_<NAME>` placeholder (the same one while it stays
   * bound; `secrets` left out unbinds them all). */
  update(policy: NetworkPolicy, options: Abortable = {}): Promise<NetworkInfo> {
    const body: Record<string, unknown> = {
      allowOut: policy.allowOut ?? [],
      denyOut: policy.denyOut ?? [],
      allowPublicTraffic: policy.allowPublicTraffic ?? false,
    };
    if (policy.secrets?.length) body.secrets = policy.secrets.map(bindingBody);
    return this.rest<NetworkInfo>('PUT', '/sandbox/:id/network', options, body);
  }
}
