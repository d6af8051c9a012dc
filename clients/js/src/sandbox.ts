/**
 * `Sandbox`: the original Node.js SDK's simple API (created on first use) and protocol v1's
 * namespaces.
 */

import { Code, type Execution, type RunCodeOptions } from './code.js';
import { Commands, Pty, type OutputCallback } from './commands.js';
import { InsienError } from './errors.js';
import { Files } from './files.js';
import { Network, Ports, type SandboxRest } from './network.js';
import { bindingBody } from './secrets.js';
import { Session } from './session.js';
import { RestClient } from './transport.js';
import type { Abortable, CommandResult, NetworkPolicy, SandboxInfo, SandboxMetrics } from './types.js';
import type { VolumeMount } from './volumes.js';

const DEFAULT_URL = 'http://localhost:3000';

export interface SandboxOptions extends ConnectionOptions {
  template?: string;
  /** Lifetime in seconds. */
  timeout?: number;
  /** Seconds the sandbox may go unused before it ends. */
  idleTimeout?: number;
  metadata?: Record<string, string>;
  env?: Record<string, string>;
  /** Limits, e.g. `{ cpu: 0.5, memory: '512m', pids: 256 }`. */
  resources?: Record<string, number | string>;
  /** Ways out, public ports and secrets added on the way out, e.g. `{ allowOut:
   * ['api.openai.com'], secrets: [{ secret: 'OPENAI', hosts: ['api.openai.com'], header:
   * 'Authorization: Bearer {secret}' }] }` (see `Secrets`). */
  network?: NetworkPolicy;
  /** Your volumes to mount, e.g. `[{ name: 'data', path: '/data', readOnly: true }]`. */
  volumes?: VolumeMount[];
}

/** Where the server is: `apiKey` defaults to `INSIEN_API_KEY` and `baseUrl` to `INSIEN_URL`
 * (in Node), then http://localhost:3000. */
export interface ConnectionOptions {
  apiKey?: string;
  baseUrl?: string;
  /** How long a lost connection is retried (a server restart) before waiting calls fail
   * with SandboxClosedError; default 60 000. */
  reconnectWindowMs?: number;
}

function environment(name: string): string | undefined {
  const process = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
  return process?.env?.[name];
}

function resolve(options: ConnectionOptions): { apiKey: string; baseUrl: string } {
  const apiKey = options.apiKey ?? environment('INSIEN_API_KEY');
  if (!apiKey) throw new InsienError('no API key: pass { apiKey } or set INSIEN_API_KEY');
  return { apiKey, baseUrl: (options.baseUrl ?? environment('INSIEN_URL') ?? DEFAULT_URL).replace(/\/+$/, '') };
}

/**
 * A sandbox. The original Node.js SDK's usage works as it did:
 *
 *   const sandbox = new Sandbox({ apiKey });
 *   await sandbox.writeFile('hello.js', "console.log('Hello!');");
 *   const result = await sandbox.runCommand('node', ['hello.js']);
 *   await sandbox.destroy();
 *
 * It is created on first use (or by `Sandbox.create()` / `create()`).
 */
export class Sandbox {
  readonly commands: Commands;
  readonly files: Files;
  readonly pty: Pty;
  /** Ports programs in the sandbox listen on, from outside: `ports.url(8000)`. */
  readonly ports: Ports;
  /** The sandbox's ways out: `network.update({ allowOut: [...] })`. */
  readonly network: Network;
  /** Code contexts (`sandbox.code.createContext()`, ...); cells run with `runCode`. */
  readonly code: Code;
  private readonly session: Session;

  constructor(options: SandboxOptions & { sandboxId?: string } = {}) {
    const { apiKey, baseUrl } = resolve(options);
    const made: Record<string, unknown> = {};
    for (const name of ['template', 'timeout', 'idleTimeout', 'metadata', 'env', 'resources', 'network', 'volumes'] as const) {
      if (options[name] !== undefined) made[name] = options[name];
    }
    if (options.network?.secrets) made.network = { ...options.network, secrets: options.network.secrets.map(bindingBody) };
    this.session = new Session(apiKey, baseUrl, made, options.sandboxId, options.reconnectWindowMs);
    this.commands = new Commands(this.session);
    this.files = new Files(this.session);
    this.pty = new Pty(this.commands);
    const rest: SandboxRest = (method, path, options, body) => this.rest(method, path, options, body);
    this.ports = new Ports(rest, async (signal) => ({
      baseUrl: this.session.rest.baseUrl,
      apiKey: this.session.rest.apiKey,
      sandboxId: await this.session.create(signal),
    }));
    this.network = new Network(rest);
    this.code = new Code(this.session);
  }

  /** A new sandbox, created now. */
  static async create(options: SandboxOptions & Abortable = {}): Promise<Sandbox> {
    const sandbox = new Sandbox(options);
    await sandbox.create(options);
    return sandbox;
  }

  /** An existing sandbox (from any process); `close()` leaves it running. */
  static async connect(sandboxId: string, options: ConnectionOptions & Abortable = {}): Promise<Sandbox> {
    const sandbox = new Sandbox({ ...options, sandboxId });
    await sandbox.info(options);
    return sandbox;
  }

  /** The caller's sandboxes (recently ended ones too), optionally filtered. */
  static async list(options: ConnectionOptions & Abortable & { state?: string; metadata?: Record<string, string> } = {}): Promise<SandboxInfo[]> {
    const { apiKey, baseUrl } = resolve(options);
    const rest = new RestClient(baseUrl, apiKey);
    const params: Record<string, string> = { limit: '200' };
    if (options.state !== undefined) params.state = options.state;
    for (const [name, value] of Object.entries(options.metadata ?? {})) params[`metadata.${name}`] = value;
    const found: SandboxInfo[] = [];
    for (;;) {
      const page = await rest.json<{ sandboxes: SandboxInfo[]; nextCursor?: string | null }>('GET', '/sandboxes', { params, signal: options.signal });
      found.push(...page.sandboxes.map(infoOf));
      if (!page.nextCursor) return found;
      params.cursor = page.nextCursor;
    }
  }

  /** The sandbox's id; undefined until it is created. */
  get sandboxId(): string | undefined {
    return this.session.sandboxId;
  }

  /** The sandbox's WebSocket URL (with a token when this object created it). */
  get agentUrl(): string | undefined {
    return this.session.agentUrl;
  }

  get baseUrl(): string {
    return this.session.rest.baseUrl;
  }

  /** Create the sandbox now (otherwise the first call does). Resolves to its id. */
  create(options: Abortable = {}): Promise<string> {
    return this.session.create(options.signal);
  }

  private async rest<T>(method: string, path: string, options: Abortable, body?: unknown): Promise<T> {
    const id = await this.session.create(options.signal);
    return this.session.rest.json<T>(method, path.replace(':id', id), { body, signal: options.signal });
  }

  /** State, lifetime, metadata and clients of this sandbox. */
  async info(options: Abortable = {}): Promise<SandboxInfo> {
    return infoOf(await this.rest<SandboxInfo>('GET', '/sandboxes/:id', options));
  }

  /** CPU, memory, disk and processes now (reading it is not activity). */
  metrics(options: Abortable = {}): Promise<SandboxMetrics> {
    return this.rest<SandboxMetrics>('GET', '/sandboxes/:id/metrics', options);
  }

  /** The agent's own log: its last 200 stderr lines (kept after the sandbox ends). */
  async logs(options: Abortable = {}): Promise<Array<{ timestamp: string; line: string }>> {
    return (await this.rest<{ logs: Array<{ timestamp: string; line: string }> }>('GET', '/sandboxes/:id/logs', options)).logs;
  }

  /** Let the sandbox live `seconds` from now (within the operator's maximum). */
  async setTimeout(seconds: number, options: Abortable = {}): Promise<SandboxInfo> {
    return infoOf(await this.rest<SandboxInfo>('POST', '/sandbox/:id/keepalive', options, { timeout: seconds }));
  }

  /** Extend the sandbox's life by its own timeout, from now. */
  async keepalive(options: Abortable = {}): Promise<SandboxInfo> {
    return infoOf(await this.rest<SandboxInfo>('POST', '/sandbox/:id/keepalive', options));
  }

  /** Freeze the sandbox: its processes stop, it uses no CPU and never goes idle. */
  async pause(options: Abortable = {}): Promise<SandboxInfo> {
    return infoOf(await this.rest<SandboxInfo>('POST', '/sandbox/:id/pause', options));
  }

  async resume(options: Abortable = {}): Promise<SandboxInfo> {
    return infoOf(await this.rest<SandboxInfo>('POST', '/sandbox/:id/resume', options));
  }

  /** Save the sandbox's files as a template; pass it as `template` to make copies. */
  async snapshot(options: Abortable = {}): Promise<string> {
    return (await this.rest<{ template: string }>('POST', '/sandbox/:id/snapshot', options)).template;
  }

  /** The original Node.js SDK's status: `{ sandboxId, connected, createdAt }`. */
  status(options: Abortable = {}): Promise<{ sandboxId: string; connected: boolean; createdAt: string }> {
    return this.rest('GET', '/sandbox/:id/status', options);
  }

  /** Run a cell in a code context where variables and imports persist between calls (the
   * default Python context unless `context`); output streams to the callbacks as it comes. */
  runCode(code: string, options: RunCodeOptions = {}): Promise<Execution> {
    return this.code.run(code, options);
  }

  /** Round-trip an RPC to the agent; resolves to the agent's clock. */
  async ping(options: Abortable = {}): Promise<number> {
    const reply = await (await this.session.connection(options.signal)).call({ type: 'ping' }, options);
    return Number(reply.time);
  }

  /** Destroy the sandbox and its container. Calling it twice is harmless. */
  destroy(options: Abortable = {}): Promise<void> {
    return this.session.destroy(options.signal);
  }

  /** Close this object's connection; the sandbox goes on (see `destroy`). */
  close(): void {
    this.session.closeConnection();
  }

  // -- the original Node.js SDK's operations -----------------------------------------------

  /** Run `cmd` with `args` (no shell) and wait for it: the original Node.js SDK's `runCommand`. */
  runCommand(cmd: string, args: string[] = [], options: Abortable & { cwd?: string; env?: Record<string, string>; onStdout?: OutputCallback; onStderr?: OutputCallback } = {}): Promise<CommandResult> {
    return this.commands.run(cmd, { ...options, args });
  }

  /** The original Node.js SDK's `writeFile`. */
  writeFile(path: string, content: string | Uint8Array, options: Abortable = {}): Promise<void> {
    return this.files.write(path, content, options);
  }

  /** The original Node.js SDK's `getFile`: `{ content, path }` of a text file. */
  async getFile(path: string, options: Abortable = {}): Promise<{ content: string; path: string }> {
    return { content: await this.files.read(path, options), path };
  }
}

function infoOf(raw: SandboxInfo): SandboxInfo {
  return {
    ...raw,
    idleTimeout: raw.idleTimeout ?? null,
    metadata: raw.metadata ?? {},
    resources: raw.resources ?? {},
    clients: raw.clients ?? 0,
    connected: Boolean(raw.connected),
    endReason: raw.endReason ?? null,
    endedAt: raw.endedAt ?? null,
  };
}
