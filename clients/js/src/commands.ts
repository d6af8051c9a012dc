/** `sandbox.commands` and `sandbox.pty`: foreground commands, background handles, terminals. */

import { Buffer } from './buffer.js';
import { AbortError, RPCError, SandboxClosedError } from './errors.js';
import { check, type Message } from './rpc.js';
import type { Session } from './session.js';
import type { Abortable, CommandResult, OutputChunk, ProcessInfo, Stream } from './types.js';

export type OutputCallback = (data: string) => void | Promise<void>;
export type BytesCallback = (data: Uint8Array) => void | Promise<void>;

/** Output kept per stream for `wait()`; past it the result says `truncated`. */
const MAX_KEPT_OUTPUT = 16 * 1024 * 1024;
/** Chunks offered to `for await` on a handle; later ones are counted in `droppedChunks`. */
const ITERATION_BUFFER = 1024;

export interface RunOptions extends Abortable {
  /** With `args`, `cmd` runs directly; without, `cmd` is a shell command line (`/bin/sh -c`). */
  args?: string[];
  cwd?: string;
  envs?: Record<string, string>;
  /** The same as `envs` (the Python SDK's name). */
  env?: Record<string, string>;
  stdin?: string;
  /** Seconds; the command's whole process group is killed when it passes. */
  timeout?: number;
  onStdout?: OutputCallback;
  onStderr?: OutputCallback;
  background?: boolean;
}

function commandLine(cmd: string, args: string[] | undefined): [string, string[]] {
  return args === undefined ? ['/bin/sh', ['-c', cmd]] : [cmd, [...args]];
}

function base64(data: Uint8Array): string {
  let text = '';
  for (let i = 0; i < data.length; i += 0x8000) text += String.fromCharCode(...data.subarray(i, i + 0x8000));
  return btoa(text);
}

export function fromBase64(text: string): Uint8Array {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i += 1) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

export function encodeData(data: string | Uint8Array): Message {
  return typeof data === 'string' ? { data } : { data: base64(data), encoding: 'base64' };
}

function resultOf(reply: Message): CommandResult {
  return {
    stdout: String(reply.stdout ?? ''),
    stderr: String(reply.stderr ?? ''),
    exitCode: Number(reply.exitCode ?? -1),
    signal: (reply.signal as string | undefined) ?? null,
    truncated: Boolean(reply.truncated),
    timedOut: Boolean(reply.timedOut),
    oom: Boolean(reply.oom),
    durationMs: (reply.durationMs as number | undefined) ?? null,
    pid: (reply.pid as number | undefined) ?? null,
  };
}

/** Output bytes as text, never splitting a character across chunks. */
class Text {
  private readonly decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };

  decode(stream: Stream, data: Uint8Array | undefined): string {
    return data === undefined ? this.decoders[stream].decode() : this.decoders[stream].decode(data, { stream: true });
  }
}

/**
 * A process running in the sandbox: its output as it comes, its exit, and its controls.
 * Output is kept for `wait()` (up to 16 MiB per stream) and offered to `for await` through a
 * buffer of 1024 chunks. The process keeps running if the handle goes away; follow it again
 * with `sandbox.commands.connect(pid)`.
 */
export class CommandHandle implements AsyncIterable<OutputChunk> {
  pid = 0;
  droppedChunks = 0;
  private readonly kept: Record<Stream, Uint8Array[]> = { stdout: [], stderr: [] };
  private readonly keptBytes: Record<Stream, number> = { stdout: 0, stderr: 0 };
  private truncated = false;
  private readonly chunks = new Buffer<OutputChunk>(ITERATION_BUFFER);
  private readonly text = new Text();
  private finished: Promise<Message> | undefined;
  private exitMessage: Message | undefined;
  private pending: Promise<void> = Promise.resolve();

  /** @internal */
  constructor(
    private readonly commands: Commands,
    private readonly binary: boolean,
    private readonly on: Record<Stream, ((data: never) => void | Promise<void>) | undefined>,
  ) {}

  /** @internal Starts following; resolves once the process runs (or rejects if it cannot). */
  async follow(request: Message, signal: AbortSignal | undefined): Promise<void> {
    const connection = await this.commands.session.connection(signal);
    let started!: () => void;
    const running = new Promise<void>((resolve) => {
      started = resolve;
    });
    this.finished = connection.request(request, {
      onEvent: (message) => {
        if (message.type === 'spawnResponse' || message.type === 'attachResponse') {
          this.pid = Number(message.pid);
          started();
        } else if (message.type === 'output') {
          this.output(message);
        }
      },
    });
    this.finished.then(
      (final) => {
        this.exitMessage = final;
        this.flushText();
        this.chunks.close();
      },
      () => this.chunks.close(),
    );
    await Promise.race([running, this.finished.then((final) => check(final) && undefined)]);
    if (this.pid === 0) {
      const final = await this.finished;
      check(final);
      throw new SandboxClosedError(`the process ended before it started (${String(final.type)})`);
    }
  }

  private output(message: Message): void {
    const stream: Stream = message.stream === 'stderr' ? 'stderr' : 'stdout';
    const raw = message.data;
    let bytes: Uint8Array;
    let data: string | Uint8Array;
    if (raw instanceof Uint8Array) {
      bytes = raw;
      data = this.binary ? raw : this.text.decode(stream, raw);
    } else {
      const text = String(raw ?? '');
      bytes = this.binary ? fromBase64(text) : new TextEncoder().encode(text);
      data = this.binary ? bytes : text;
    }
    this.deliver(stream, data, bytes, Number(message.dropped ?? 0));
  }

  private flushText(): void {
    if (this.binary) return;
    for (const stream of ['stdout', 'stderr'] as const) {
      const rest = this.text.decode(stream, undefined);
      if (rest) this.deliver(stream, rest, new Uint8Array(), 0);
    }
  }

  private deliver(stream: Stream, data: string | Uint8Array, bytes: Uint8Array, dropped: number): void {
    const room = MAX_KEPT_OUTPUT - this.keptBytes[stream];
    if (bytes.length > room) this.truncated = true;
    if (room > 0) {
      const part = bytes.subarray(0, room);
      this.kept[stream].push(part);
      this.keptBytes[stream] += part.length;
    }
    const callback = this.on[stream] as ((data: string | Uint8Array) => void | Promise<void>) | undefined;
    if (callback !== undefined) {
      // Callbacks run in order; a slow async one delays the next, never reorders them.
      this.pending = this.pending.then(() => callback(data)).then(
        () => undefined,
        () => undefined,
      );
    }
    if (!this.chunks.push({ stream, data, dropped })) this.droppedChunks += 1;
  }

  /** Whether the process has exited (its `exit` event has arrived). */
  get exited(): boolean {
    return this.exitMessage?.type === 'exit';
  }

  [Symbol.asyncIterator](): AsyncIterator<OutputChunk> {
    return this.chunks;
  }

  /** Wait for the process to end; throws what ended the following otherwise. */
  async wait(options: Abortable = {}): Promise<CommandResult> {
    if (this.finished === undefined) throw new SandboxClosedError('not started');
    const final = await abortable(this.finished, options.signal);
    await this.pending;
    if (final.type === 'detached') throw new SandboxClosedError(`stopped following process ${this.pid}`);
    check(final);
    const join = (stream: Stream): string => new TextDecoder().decode(concat(this.kept[stream]));
    return { ...resultOf(final), stdout: join('stdout'), stderr: join('stderr'), truncated: this.truncated, pid: this.pid };
  }

  kill(signal: string | number = 'SIGKILL', options: Abortable = {}): Promise<boolean> {
    return this.commands.kill(this.pid, signal, options);
  }

  sendStdin(data: string | Uint8Array, options: Abortable & { eof?: boolean } = {}): Promise<void> {
    return this.commands.sendStdin(this.pid, data, options);
  }

  /** Stop following the process (it keeps running); `wait()` then throws. */
  async disconnect(options: Abortable = {}): Promise<void> {
    const connection = await this.commands.session.connection(options.signal);
    await connection.call({ type: 'detach', pid: this.pid }, { signal: options.signal });
    await this.finished?.catch(() => undefined);
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, part) => n + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** The promise, or an AbortError when the signal fires first (the work goes on). */
function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return promise;
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(new AbortError('stopped waiting (the process goes on)', { cause: signal.reason }));
    if (signal.aborted) onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/** Run commands in the sandbox: `await sandbox.commands.run('ls -la')`. */
export class Commands {
  /** @internal */
  constructor(readonly session: Session) {}

  run(cmd: string, options: RunOptions & { background: true }): Promise<CommandHandle>;
  run(cmd: string, options?: RunOptions & { background?: false }): Promise<CommandResult>;
  run(cmd: string, options?: RunOptions): Promise<CommandResult | CommandHandle>;
  /** Run a command; with `background: true`, a handle at once instead of its result. */
  async run(cmd: string, options: RunOptions = {}): Promise<CommandResult | CommandHandle> {
    const [program, argv] = commandLine(cmd, options.args);
    const message: Message = { cmd: program, args: argv };
    if (options.cwd !== undefined) message.cwd = options.cwd;
    const env = options.envs ?? options.env;
    if (env !== undefined) message.env = env;
    if (options.timeout !== undefined) message.timeout = options.timeout;
    if (options.background) {
      const handle = await this.spawn(message, options, undefined);
      if (options.stdin !== undefined) await handle.sendStdin(options.stdin, { eof: true, signal: options.signal });
      return handle;
    }
    if (options.stdin !== undefined) message.stdin = options.stdin;
    return this.exec(message, options);
  }

  private async exec(message: Message, options: RunOptions): Promise<CommandResult> {
    const connection = await this.session.connection(options.signal);
    const callbacks: Record<Stream, OutputCallback | undefined> = { stdout: options.onStdout, stderr: options.onStderr };
    const streaming = callbacks.stdout !== undefined || callbacks.stderr !== undefined;
    const request: Message = { type: 'exec', ...message, stream: streaming };
    if (streaming) request.binary = true;
    const text = new Text();
    let pending: Promise<void> = Promise.resolve();
    const notify = (stream: Stream, data: string): void => {
      const callback = callbacks[stream];
      if (callback !== undefined && data) pending = pending.then(() => callback(data)).then(() => undefined, () => undefined);
    };
    const final = await connection.request(request, {
      signal: options.signal,
      onEvent: (event) => {
        if (event.type !== 'output') return;
        const stream: Stream = event.stream === 'stderr' ? 'stderr' : 'stdout';
        const data = event.data instanceof Uint8Array ? text.decode(stream, event.data) : String(event.data ?? '');
        notify(stream, data);
      },
    });
    notify('stdout', text.decode('stdout', undefined));
    notify('stderr', text.decode('stderr', undefined));
    await pending;
    return resultOf(check(final));
  }

  /** @internal */
  async spawn(message: Message, options: RunOptions, pty: { cols: number; rows: number } | undefined, onData?: BytesCallback): Promise<CommandHandle> {
    const handle = new CommandHandle(this, pty !== undefined, {
      stdout: (pty !== undefined ? onData : options.onStdout) as never,
      stderr: options.onStderr as never,
    });
    const request: Message = { type: 'spawn', ...message, binary: true };
    if (pty !== undefined) Object.assign(request, { pty, encoding: 'base64' });
    await handle.follow(request, options.signal);
    return handle;
  }

  /** Follow a process started earlier, by anyone: its buffered output is replayed first. */
  async connect(pid: number, options: Abortable & { onStdout?: OutputCallback; onStderr?: OutputCallback; replay?: boolean } = {}): Promise<CommandHandle> {
    const handle = new CommandHandle(this, false, { stdout: options.onStdout as never, stderr: options.onStderr as never });
    await handle.follow({ type: 'attach', pid, replay: options.replay ?? true, binary: true }, options.signal);
    return handle;
  }

  /** Running processes, and the background ones that exited recently. */
  async list(options: Abortable = {}): Promise<ProcessInfo[]> {
    const reply = await (await this.session.connection(options.signal)).call({ type: 'processes' }, options);
    return (reply.processes as Record<string, unknown>[]).map((raw) => ({
      pid: Number(raw.pid),
      cmd: String(raw.cmd),
      args: (raw.args as string[] | undefined) ?? [],
      running: Boolean(raw.running),
      background: Boolean(raw.background),
      pty: Boolean(raw.pty),
      exitCode: (raw.exitCode as number | undefined) ?? null,
      signal: (raw.signal as string | undefined) ?? null,
    }));
  }

  /** Send a signal to the process's whole group; false if it had already exited. */
  async kill(pid: number, signal: string | number = 'SIGKILL', options: Abortable = {}): Promise<boolean> {
    const reply = await (await this.session.connection(options.signal)).call({ type: 'signal', pid, signal }, options);
    return Boolean(reply.delivered);
  }

  /** Kill every process of the sandbox user (the way back from a fork bomb); how many died. */
  async killAll(options: Abortable = {}): Promise<number> {
    const reply = await (await this.session.connection(options.signal)).call({ type: 'killAll' }, options);
    return Number(reply.killed);
  }

  async sendStdin(pid: number, data: string | Uint8Array, options: Abortable & { eof?: boolean } = {}): Promise<void> {
    const connection = await this.session.connection(options.signal);
    await connection.call({ type: 'stdin', pid, eof: options.eof ?? false, ...encodeData(data) }, options);
  }
}

export interface PtyOptions extends Abortable {
  cols?: number;
  rows?: number;
  cmd?: string;
  args?: string[];
  cwd?: string;
  envs?: Record<string, string>;
  /** The terminal's output, as bytes. */
  onData?: BytesCallback;
}

/** Interactive terminals: `await sandbox.pty.create({ onData })` runs a shell on a PTY. */
export class Pty {
  /** @internal */
  constructor(private readonly commands: Commands) {}

  create(options: PtyOptions = {}): Promise<CommandHandle> {
    const message: Message = { cmd: options.cmd ?? '/bin/bash', args: options.args ?? ['-i'] };
    if (options.cwd !== undefined) message.cwd = options.cwd;
    if (options.envs !== undefined) message.env = options.envs;
    const runOptions: RunOptions = options.signal === undefined ? {} : { signal: options.signal };
    return this.commands.spawn(message, runOptions, { cols: options.cols ?? 80, rows: options.rows ?? 24 }, options.onData);
  }

  async resize(pid: number, size: { cols: number; rows: number }, options: Abortable = {}): Promise<void> {
    await (await this.commands.session.connection(options.signal)).call({ type: 'resize', pid, ...size }, options);
  }

  sendInput(pid: number, data: string | Uint8Array, options: Abortable = {}): Promise<void> {
    return this.commands.sendStdin(pid, data, options);
  }

  kill(pid: number, options: Abortable = {}): Promise<boolean> {
    return this.commands.kill(pid, 'SIGKILL', options);
  }
}

export { RPCError };
