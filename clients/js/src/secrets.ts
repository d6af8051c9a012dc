/**
 * Secrets that never enter the sandbox: the server keeps each value encrypted, and its egress
 * proxy adds it to requests on the way out, only for the hosts a sandbox's binding names. No
 * call here, or on the server, answers a value: `list()` gives names and dates. Bind one at
 * create (`new Sandbox({ network: { allowOut: [...], secrets: [...] } })`) or live
 * (`sandbox.network.update({ ..., secrets: [...] })`).
 */

import { type VolumeConnection, restFor } from './volumes.js';
import type { Abortable } from './types.js';

/**
 * Which secret goes to which hosts, and how. With `header` (`'Authorization: Bearer {secret}'`)
 * the proxy sets that header on every request to `hosts`; either way the sandbox finds an
 * opaque placeholder in `INSIEN_SECRET_<NAME>`, which the proxy swaps for the value wherever
 * it appears in a request head to `hosts` (and in a body up to 1 MiB with `body: true`). Sent
 * anywhere else, the placeholder is refused. `methods` and `paths` (prefixes) narrow it.
 * Hosts (`api.example.com`, `*.example.com`, one address; `:port` optional) must be in
 * `allowOut` too.
 */
export interface SecretBinding {
  secret: string;
  hosts: string[];
  header?: string | null;
  methods?: string[];
  paths?: string[];
  body?: boolean;
  /** What the sandbox sees in `INSIEN_SECRET_<NAME>` (in the server's answers only). */
  readonly placeholder?: string;
}

/** A secret as anyone may see it: never its value. */
export interface SecretInfo {
  name: string;
  description: string;
  createdAt: string;
  updatedAt: string;
  /** 1, and one more at each rotation. */
  version: number;
}

/** A binding as the server's policy body takes it (the placeholder is the server's to make). */
export function bindingBody(binding: SecretBinding): Record<string, unknown> {
  const body: Record<string, unknown> = { secret: binding.secret, hosts: binding.hosts };
  if (binding.header !== undefined && binding.header !== null) body.header = binding.header;
  if (binding.methods?.length) body.methods = binding.methods;
  if (binding.paths?.length) body.paths = binding.paths;
  if (binding.body) body.body = true;
  return body;
}

function path(name: string): string {
  return `/secrets/${encodeURIComponent(name)}`;
}

/** Your secrets on a server (its operator must have given it INSIEN_SECRETS_KEY, else every
 * call throws UnavailableError). */
export class Secrets {
  private readonly rest;

  constructor(options: VolumeConnection = {}) {
    this.rest = restFor(options);
  }

  /** Keep a secret (a letter, then letters, digits or _; its value one line of at most
   * 8 KiB). The value is never answered again, by any route. */
  create(name: string, value: string, options: Abortable & { description?: string } = {}): Promise<SecretInfo> {
    const body = { name, value, description: options.description ?? '' };
    return this.rest.json<SecretInfo>('POST', '/secrets', { body, signal: options.signal });
  }

  /** Your secrets' names, descriptions, dates and versions (never a value). */
  async list(options: Abortable = {}): Promise<SecretInfo[]> {
    return (await this.rest.json<{ secrets: SecretInfo[] }>('GET', '/secrets', { signal: options.signal })).secrets;
  }

  /** A new value: sandboxes bound to it use it from their next request. */
  rotate(name: string, value: string, options: Abortable & { description?: string } = {}): Promise<SecretInfo> {
    const body: Record<string, unknown> = { value };
    if (options.description !== undefined) body.description = options.description;
    return this.rest.json<SecretInfo>('PUT', path(name), { body, signal: options.signal });
  }

  /** Gone at once: requests that would carry it are refused from now on. */
  async delete(name: string, options: Abortable = {}): Promise<void> {
    await this.rest.json('DELETE', path(name), { signal: options.signal });
  }
}
