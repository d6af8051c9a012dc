/** What the SDK returns, in the server's camelCase. */

import type { SecretBinding } from './secrets.js';

export type Stream = 'stdout' | 'stderr';

/** What a finished command produced. `truncated`: the output passed the server's cap
 * (streaming callbacks still saw all of it); `timedOut`: killed by its timeout; `oom`: killed
 * for passing the sandbox's memory limit; `signal`: the signal that ended it, if one did. */
export interface CommandResult {
  stdout: string;
  stderr: string;
  exitCode: number;
  signal: string | null;
  truncated: boolean;
  timedOut: boolean;
  oom: boolean;
  durationMs: number | null;
  pid: number | null;
}

/** A piece of a running command's output: `data` is a string, or bytes for a PTY. */
export interface OutputChunk {
  stream: Stream;
  data: string | Uint8Array;
  dropped: number;
}

export interface ProcessInfo {
  pid: number;
  cmd: string;
  args: string[];
  running: boolean;
  background: boolean;
  pty: boolean;
  exitCode: number | null;
  signal: string | null;
}

export interface EntryInfo {
  name: string;
  path: string;
  type: string;
  size: number;
  mode: number;
  mtime: number;
  target?: string | null;
  owner?: string;
  group?: string;
}

export interface SandboxInfo {
  sandboxId: string;
  state: 'creating' | 'running' | 'paused' | 'ended' | string;
  template: string;
  createdAt: string;
  expiresAt: string;
  timeout: number;
  idleTimeout: number | null;
  metadata: Record<string, string>;
  resources: Record<string, unknown>;
  clients: number;
  connected: boolean;
  endReason: string | null;
  endedAt: string | null;
  network?: Required<Omit<NetworkPolicy, 'secrets'>> & { secrets?: SecretBinding[] };
}

/** Where a sandbox may connect out (`allowOut` minus `denyOut`; rules like `example.org`,
 * `*.example.com`, `10.0.0.0/8`, `public`, `*`, each with an optional `:port`), and whether
 * its ports answer anyone. */
export interface NetworkPolicy {
  allowOut?: string[];
  denyOut?: string[];
  allowPublicTraffic?: boolean;
  /** Secrets the egress proxy adds on the way out (see `Secrets`); absent in answers when
   * there are none. */
  secrets?: SecretBinding[];
}

export interface NetworkInfo extends Required<Omit<NetworkPolicy, 'secrets'>> {
  secrets?: SecretBinding[];
  sandboxId: string;
  /** What the sandbox's egress did; `secretsUsed`: requests the proxy added a secret to. */
  egress: { connections: number; refused: number; bytesOut: number; bytesIn: number; secretsUsed: number };
}

/** One sample of a sandbox's recent series (`SandboxMetrics.series`). */
export interface MetricsPoint {
  timestamp: string;
  cpuPercent: number;
  memoryBytes: number;
  pids: number;
  diskBytes: number;
  tmpBytes: number | null;
}

/** What a sandbox uses now, and its recent samples: each reading keeps it sampled every 5 s
 * for a minute. `memoryPeak` is its cgroup's high-water mark; `/tmp` is a tmpfs. */
export interface SandboxMetrics {
  timestamp: string;
  cpuCount: number;
  cpuPercent: number;
  cpuSeconds: number;
  memoryBytes: number;
  memoryLimit: number;
  memoryCache: number;
  memoryPeak: number | null;
  diskBytes: number;
  diskLimit: number;
  tmpBytes: number | null;
  tmpLimit: number | null;
  pids: number;
  egressBytesOut: number;
  egressBytesIn: number;
  portBytesIn: number;
  portBytesOut: number;
  series: MetricsPoint[];
}

/** One change under a watched directory: `name` relative to it. */
export interface FilesystemEvent {
  name: string;
  op: 'create' | 'write' | 'remove' | 'rename' | 'chmod' | string;
}

/** Every call takes an AbortSignal: aborting rejects it and cancels the request in the sandbox. */
export interface Abortable {
  signal?: AbortSignal;
}
