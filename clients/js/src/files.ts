/** `sandbox.files`: read, write and manage files; stream big ones over REST; watch folders. */

import { Buffer } from './buffer.js';
import { fromBase64 } from './commands.js';
import { check, type Message } from './rpc.js';
import type { Session } from './session.js';
import type { Abortable, EntryInfo, FilesystemEvent } from './types.js';

/** What `upload` accepts: bytes, a Blob/File, a web stream, or any async iterable of bytes. */
export type UploadSource = string | Uint8Array | ArrayBuffer | Blob | ReadableStream<Uint8Array> | AsyncIterable<Uint8Array>;

const WATCH_BUFFER = 4096;

function base64(data: Uint8Array): string {
  let text = '';
  for (let i = 0; i < data.length; i += 0x8000) text += String.fromCharCode(...data.subarray(i, i + 0x8000));
  return btoa(text);
}

function entryOf(raw: Record<string, unknown>): EntryInfo {
  return {
    name: String(raw.name),
    path: String(raw.path),
    type: String(raw.type),
    size: Number(raw.size),
    mode: Number(raw.mode),
    mtime: Number(raw.mtime),
    target: (raw.target as string | undefined) ?? null,
    ...(raw.owner !== undefined ? { owner: String(raw.owner) } : {}),
    ...(raw.group !== undefined ? { group: String(raw.group) } : {}),
  };
}

/** A running watch: `for await` its events; `stop()` ends it. */
export class WatchHandle implements AsyncIterable<FilesystemEvent> {
  /** Events the sandbox dropped because they came faster than they were read. */
  dropped = 0;
  /** Why the watch ended by itself (its folder was removed), or undefined. */
  ended: string | undefined;
  private readonly events = new Buffer<FilesystemEvent>(WATCH_BUFFER);
  private readonly stopper = new AbortController();

  /** @internal */
  async start(session: Session, message: Message, signal: AbortSignal | undefined): Promise<void> {
    const connection = await session.connection(signal);
    let started!: () => void;
    const running = new Promise<void>((resolve) => {
      started = resolve;
    });
    const finished = connection.request(message, {
      signal: this.stopper.signal,
      onEvent: (event) => {
        if (event.type === 'watchStarted') started();
        else if (event.type === 'fsEvents') {
          this.dropped += Number(event.dropped ?? 0);
          for (const raw of (event.events as Record<string, unknown>[]) ?? []) {
            if (!this.events.push({ name: String(raw.name), op: String(raw.op) })) this.dropped += 1;
          }
        }
      },
    });
    finished.then(
      (final) => {
        if (final.type === 'watchEnded') this.ended = String(final.reason ?? 'ended');
        this.events.close();
      },
      () => this.events.close(),
    );
    await Promise.race([running, finished.then((final) => void check(final))]);
  }

  [Symbol.asyncIterator](): AsyncIterator<FilesystemEvent> {
    return this.events;
  }

  /** End the watch (the sandbox stops watching); iteration then ends. */
  stop(): void {
    this.stopper.abort();
    this.events.close();
  }
}

/** Read, write and manage files. Relative paths start in the sandbox's home folder. */
export class Files {
  /** @internal */
  constructor(private readonly session: Session) {}

  private async call(message: Message, options: Abortable): Promise<Message> {
    return (await this.session.connection(options.signal)).call(message, options);
  }

  /** Write a file in one message (parents are made). For big files use `upload`. */
  async write(path: string, data: string | Uint8Array, options: Abortable & { mode?: number; append?: boolean } = {}): Promise<void> {
    const message: Message = { type: 'write', path, append: options.append ?? false };
    if (typeof data === 'string') message.content = data;
    else Object.assign(message, { content: base64(data), encoding: 'base64' });
    if (options.mode !== undefined) message.mode = options.mode;
    await this.call(message, options);
  }

  read(path: string, options?: Abortable & { format?: 'text'; offset?: number; length?: number }): Promise<string>;
  read(path: string, options: Abortable & { format: 'bytes'; offset?: number; length?: number }): Promise<Uint8Array>;
  /** A file's content as text (UTF-8) or bytes, optionally a slice of it. */
  async read(path: string, options: Abortable & { format?: 'text' | 'bytes'; offset?: number; length?: number } = {}): Promise<string | Uint8Array> {
    const message: Message = { type: 'read', path };
    if (options.format === 'bytes') message.encoding = 'base64';
    if (options.offset) message.offset = options.offset;
    if (options.length !== undefined) message.length = options.length;
    const reply = await this.call(message, options);
    return options.format === 'bytes' ? fromBase64(String(reply.content)) : String(reply.content);
  }

  async list(path = '.', options: Abortable & { depth?: number } = {}): Promise<EntryInfo[]> {
    const reply = await this.call({ type: 'list', path, depth: options.depth ?? 1 }, options);
    return (reply.entries as Record<string, unknown>[]).map(entryOf);
  }

  async stat(path: string, options: Abortable = {}): Promise<EntryInfo> {
    return entryOf((await this.call({ type: 'stat', path }, options)).entry as Record<string, unknown>);
  }

  async exists(path: string, options: Abortable = {}): Promise<boolean> {
    return Boolean((await this.call({ type: 'exists', path }, options)).exists);
  }

  async mkdir(path: string, options: Abortable & { parents?: boolean } = {}): Promise<void> {
    await this.call({ type: 'mkdir', path, parents: options.parents ?? true }, options);
  }

  async remove(path: string, options: Abortable & { recursive?: boolean } = {}): Promise<void> {
    await this.call({ type: 'remove', path, recursive: options.recursive ?? false }, options);
  }

  async rename(path: string, newPath: string, options: Abortable = {}): Promise<void> {
    await this.call({ type: 'rename', path, newPath }, options);
  }

  /** Start watching a folder; resolves once it is watched, so every later change is seen. */
  async watch(path = '.', options: Abortable & { recursive?: boolean } = {}): Promise<WatchHandle> {
    const handle = new WatchHandle();
    await handle.start(this.session, { type: 'watch', path, recursive: options.recursive ?? false }, options.signal);
    return handle;
  }

  /** Stream bytes into `path` over REST (raw bytes, no base64); returns the bytes written. */
  async upload(path: string, source: UploadSource, options: Abortable = {}): Promise<number> {
    const id = await this.session.create(options.signal);
    let body: BodyInit;
    let streamed = false;
    if (typeof source === 'string') body = new TextEncoder().encode(source);
    else if (source instanceof Uint8Array || source instanceof ArrayBuffer || source instanceof Blob) body = source as BodyInit;
    else {
      body = source instanceof ReadableStream ? source : iterableToStream(source);
      streamed = true;
    }
    const init: RequestInit & { duplex?: 'half'; params?: Record<string, string> } = {
      body,
      params: { path },
      signal: options.signal ?? null,
      headers: { 'Content-Type': 'application/octet-stream' },
    };
    if (streamed) init.duplex = 'half'; // a streamed request body (fetch's requirement)
    const response = await this.session.rest.fetch('PUT', `/sandbox/${id}/files`, init);
    return Number(((await response.json()) as { bytes: number }).bytes);
  }

  download(path: string, options?: Abortable & { format?: 'bytes' }): Promise<Uint8Array>;
  download(path: string, options: Abortable & { format: 'stream' }): Promise<ReadableStream<Uint8Array>>;
  /** A file's bytes over REST, whole or as a stream (never base64). */
  async download(path: string, options: Abortable & { format?: 'bytes' | 'stream' } = {}): Promise<Uint8Array | ReadableStream<Uint8Array>> {
    const id = await this.session.create(options.signal);
    const response = await this.session.rest.fetch('GET', `/sandbox/${id}/files`, { params: { path }, signal: options.signal ?? null });
    if (options.format === 'stream') return response.body ?? new ReadableStream<Uint8Array>({ start: (c) => c.close() });
    return new Uint8Array(await response.arrayBuffer());
  }
}

function iterableToStream(source: AsyncIterable<Uint8Array>): ReadableStream<Uint8Array> {
  const iterator = source[Symbol.asyncIterator]();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { value, done } = await iterator.next();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    async cancel() {
      await iterator.return?.();
    },
  });
}
