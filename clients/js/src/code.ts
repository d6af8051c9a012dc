/** Code cells that keep their state (`sandbox.runCode`), and code contexts: docs/protocol.md,
 * "Code contexts". A context is a long-lived Python process in the sandbox; Python's default
 * context has the id `python`. */

import type { Session } from './session.js';
import { check } from './rpc.js';
import type { Abortable } from './types.js';

export interface CodeResult {
  /** True for the cell's last expression; `display(obj)` gives the others. */
  isMainResult: boolean;
  text?: string;
  html?: string;
  markdown?: string;
  /** base64 */
  png?: string;
  /** base64 */
  jpeg?: string;
  svg?: string;
  json?: unknown;
  latex?: string;
}

export interface ExecutionError {
  name: string;
  value: string;
  traceback: string;
}

export interface Execution {
  results: CodeResult[];
  logs: { stdout: string[]; stderr: string[] };
  error: ExecutionError | null;
  executionCount: number | null;
  context: string;
  /** Output past the sandbox's bound was dropped. */
  truncated: boolean;
  /** The timeout interrupted the cell (KeyboardInterrupt). */
  timedOut: boolean;
  /** The cell ignored the interrupt, so its context started again, empty. */
  restarted: boolean;
  /** The main result's text. */
  text: string | undefined;
}

export interface CodeContext {
  id: string;
  language: string;
  cwd: string;
}

export interface RunCodeOptions extends Abortable {
  language?: 'python' | 'javascript' | 'js';
  context?: string | CodeContext;
  onStdout?: (text: string) => void | Promise<void>;
  onStderr?: (text: string) => void | Promise<void>;
  onResult?: (result: CodeResult) => void | Promise<void>;
  /** Seconds; interrupts the cell and keeps its context. */
  timeout?: number;
  envs?: Record<string, string>;
}

const contextId = (context: string | CodeContext): string => (typeof context === 'string' ? context : context.id);

export class Code {
  constructor(private readonly session: Session) {}

  async run(code: string, options: RunCodeOptions = {}): Promise<Execution> {
    const message: Record<string, unknown> = { type: 'runCode', code, language: options.language ?? 'python' };
    if (options.context !== undefined) message.context = contextId(options.context);
    if (options.timeout !== undefined) message.timeout = options.timeout;
    if (options.envs !== undefined) message.envs = options.envs;
    const results: CodeResult[] = [];
    const logs = { stdout: [] as string[], stderr: [] as string[] };
    let pending: Promise<void> = Promise.resolve();
    const later = (call: () => void | Promise<void>): void => {
      pending = pending.then(call).then(() => undefined, () => undefined);
    };
    const connection = await this.session.connection(options.signal);
    const final = check(
      await connection.request(message, {
        signal: options.signal,
        onEvent: (event) => {
          if (event.type === 'codeOutput') {
            const text = String(event.text ?? '');
            const stream = event.stream === 'stderr' ? 'stderr' : 'stdout';
            logs[stream].push(text);
            const callback = stream === 'stderr' ? options.onStderr : options.onStdout;
            if (callback !== undefined) later(() => callback(text));
          } else if (event.type === 'codeResult') {
            const result = event.result as CodeResult;
            results.push(result);
            if (options.onResult !== undefined) later(() => options.onResult?.(result));
          }
        },
      }),
    );
    await pending;
    const main = results.find((result) => result.isMainResult);
    return {
      results,
      logs,
      error: (final.error as ExecutionError | null) ?? null,
      executionCount: (final.executionCount as number | null) ?? null,
      context: String(final.context),
      truncated: Boolean(final.truncated),
      timedOut: Boolean(final.timedOut),
      restarted: Boolean(final.restarted),
      text: main?.text,
    };
  }

  async createContext(options: Abortable & { language?: 'python' | 'javascript' | 'js'; cwd?: string } = {}): Promise<CodeContext> {
    const message: Record<string, unknown> = { type: 'createContext', language: options.language ?? 'python' };
    if (options.cwd !== undefined) message.cwd = options.cwd;
    return (await (await this.session.connection(options.signal)).call(message, options)).context as CodeContext;
  }

  async listContexts(options: Abortable = {}): Promise<CodeContext[]> {
    return (await (await this.session.connection(options.signal)).call({ type: 'listContexts' }, options)).contexts as CodeContext[];
  }

  async restartContext(context: string | CodeContext, options: Abortable = {}): Promise<CodeContext> {
    const message = { type: 'restartContext', context: contextId(context) };
    return (await (await this.session.connection(options.signal)).call(message, options)).context as CodeContext;
  }

  async removeContext(context: string | CodeContext, options: Abortable = {}): Promise<void> {
    await (await this.session.connection(options.signal)).call({ type: 'removeContext', context: contextId(context) }, options);
  }

  async interrupt(context: string | CodeContext = 'python', options: Abortable = {}): Promise<void> {
    await (await this.session.connection(options.signal)).call({ type: 'interruptCode', context: contextId(context) }, options);
  }
}
