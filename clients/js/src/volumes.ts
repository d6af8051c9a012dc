/**
 * Volumes: storage of your own that outlives sandboxes. Mount one at create
 * (`new Sandbox({ volumes: [{ name: 'data', path: '/data' }] })`), or reach its files without a
 * sandbox. Every write and read is checked against the SHA-256 the server reports for what the
 * volume holds; a difference throws `IntegrityError`.
 */

import { APIError, InsienError } from './errors.js';
import { RestClient } from './transport.js';
import type { Abortable } from './types.js';

const DEFAULT_URL = 'http://localhost:3000';
const DIGEST_HEADER = 'X-Insien-Sha256';

/** What the volume holds is not what was sent (or what arrived is not what it holds). */
export class IntegrityError extends InsienError {}

/** Where a sandbox sees one of your volumes. */
export interface VolumeMount {
  name: string;
  path: string;
  readOnly?: boolean;
}

export interface VolumeInfo {
  name: string;
  sizeLimit: number;
  createdAt: string;
  /** Measured when asked (`info()`); absent in a listing. */
  bytesUsed?: number;
  /** Sandboxes that mount it (`info()` only). */
  sandboxes?: string[];
}

export interface VolumeEntry {
  name: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  mtime: number;
}

/** What a write left in the volume, as the server measured it (and this SDK checked). */
export interface Written {
  path: string;
  bytes: number;
  sha256: string;
}

export interface VolumeConnection {
  apiKey?: string;
  baseUrl?: string;
}

function environment(name: string): string | undefined {
  const process = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
  return process?.env?.[name];
}

/** The REST client for a connection's key and URL (the environment's by default). */
export function restFor(options: VolumeConnection): RestClient {
  const apiKey = options.apiKey ?? environment('INSIEN_API_KEY');
  if (!apiKey) throw new InsienError('no API key: pass { apiKey } or set INSIEN_API_KEY');
  return new RestClient((options.baseUrl ?? environment('INSIEN_URL') ?? DEFAULT_URL).replace(/\/+$/, ''), apiKey);
}

async function sha256(data: Uint8Array): Promise<string> {
  const digest = await globalThis.crypto.subtle.digest('SHA-256', data as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (byte) => byte.toString(16).padStart(2, '0')).join('');
}

/** One of your volumes, by name. */
export class Volume {
  private readonly rest: RestClient;

  /** The volume `name` (no call is made: `Volume.create` makes one). */
  constructor(
    readonly name: string,
    options: VolumeConnection = {},
  ) {
    this.rest = restFor(options);
  }

  /** Make a volume; `sizeLimit` in bytes or as '512m', '2g' (the server's default: 1g). */
  static async create(name: string, options: VolumeConnection & Abortable & { sizeLimit?: number | string } = {}): Promise<Volume> {
    const volume = new Volume(name, options);
    const body: Record<string, unknown> = { name };
    if (options.sizeLimit !== undefined) body.sizeLimit = options.sizeLimit;
    await volume.rest.json('POST', '/volumes', { body, signal: options.signal });
    return volume;
  }

  /** Your volumes, oldest first. */
  static async list(options: VolumeConnection & Abortable = {}): Promise<VolumeInfo[]> {
    const found = await restFor(options).json<{ volumes: VolumeInfo[] }>('GET', '/volumes', { signal: options.signal });
    return found.volumes;
  }

  private get base(): string {
    return `/volumes/${encodeURIComponent(this.name)}`;
  }

  /** Its limit, the bytes its files hold now, and the sandboxes that mount it. */
  info(options: Abortable = {}): Promise<VolumeInfo> {
    return this.rest.json<VolumeInfo>('GET', this.base, { signal: options.signal });
  }

  /** Delete it and its files; refused while a sandbox mounts it unless `force`. */
  async delete(options: Abortable & { force?: boolean } = {}): Promise<void> {
    await this.rest.json('DELETE', this.base, { params: { force: String(options.force ?? false) }, signal: options.signal });
  }

  /** This volume at `path` of a sandbox to be created. */
  mount(path: string, options: { readOnly?: boolean } = {}): VolumeMount {
    return { name: this.name, path, readOnly: options.readOnly ?? false };
  }

  /** A folder's entries (symlinks are listed, never followed). */
  async listFiles(path = '/', options: Abortable = {}): Promise<VolumeEntry[]> {
    const found = await this.rest.json<{ entries: VolumeEntry[] }>('GET', `${this.base}/entries`, { params: { path }, signal: options.signal });
    return found.entries;
  }

  async makeDir(path: string, options: Abortable = {}): Promise<void> {
    await this.rest.json('POST', `${this.base}/folders`, { params: { path }, signal: options.signal });
  }

  /** Remove a file, or a folder with everything in it. */
  async remove(path: string, options: Abortable = {}): Promise<void> {
    await this.rest.json('DELETE', `${this.base}/files`, { params: { path }, signal: options.signal });
  }

  /**
   * Write a whole file (folders on the way are made). Its SHA-256 goes with it
   * (`X-Insien-Sha256`): bytes changed on the way are refused before anything is written
   * (`IntegrityError`), and the answer is checked against it too.
   */
  async write(path: string, data: string | Uint8Array, options: Abortable = {}): Promise<Written> {
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
    const expected = await sha256(bytes);
    let response: Response;
    try {
      response = await this.rest.fetch('PUT', `${this.base}/files`, {
        params: { path },
        body: bytes as Uint8Array<ArrayBuffer>,
        headers: { 'Content-Type': 'application/octet-stream', [DIGEST_HEADER]: expected },
        signal: options.signal ?? null,
      });
    } catch (error) {
      if (error instanceof APIError && error.status === 400 && error.detail.includes(DIGEST_HEADER)) {
        // The server received other bytes than these: refused, nothing written.
        throw new IntegrityError(`${path}: ${error.detail}`, { cause: error });
      }
      throw error;
    }
    const written = (await response.json()) as Written & { success: boolean };
    if (written.bytes !== bytes.length || written.sha256 !== expected) {
      throw new IntegrityError(
        `${path}: sent ${bytes.length} bytes with SHA-256 ${expected}, the volume holds ${written.bytes} with ${written.sha256}`,
      );
    }
    return { path: written.path, bytes: written.bytes, sha256: written.sha256 };
  }

  /** A whole file's bytes; checked against the SHA-256 the server sends. */
  async read(path: string, options: Abortable = {}): Promise<Uint8Array> {
    const response = await this.rest.fetch('GET', `${this.base}/files`, { params: { path }, signal: options.signal ?? null });
    const expected = response.headers.get(DIGEST_HEADER) ?? '';
    const bytes = new Uint8Array(await response.arrayBuffer());
    const got = await sha256(bytes);
    if (got !== expected) {
      throw new IntegrityError(`${path}: received SHA-256 ${got}, the volume holds ${expected || 'no digest'}`);
    }
    return bytes;
  }

  /** A whole text file (UTF-8). */
  async readText(path: string, options: Abortable = {}): Promise<string> {
    return new TextDecoder().decode(await this.read(path, options));
  }
}
