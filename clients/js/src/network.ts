/** `sandbox.ports` and `sandbox.network`: reaching the sandbox's ports from outside, and the
 * sandbox's ways out. Both are REST calls on the sandbox (created on first use). */

import type { Abortable, NetworkInfo, NetworkPolicy } from './types.js';

/** How the namespaces reach the server: a REST call on this sandbox (`:id` filled in). */
export type SandboxRest = <T>(method: string, path: string, options: Abortable, body?: unknown) => Promise<T>;

export class Ports {
  constructor(private readonly rest: SandboxRest) {}

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
   * started after egress is turned on get the proxy variables. */
  update(policy: NetworkPolicy, options: Abortable = {}): Promise<NetworkInfo> {
    const body = {
      allowOut: policy.allowOut ?? [],
      denyOut: policy.denyOut ?? [],
      allowPublicTraffic: policy.allowPublicTraffic ?? false,
    };
    return this.rest<NetworkInfo>('PUT', '/sandbox/:id/network', options, body);
  }
}
