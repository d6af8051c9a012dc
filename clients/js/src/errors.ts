/**
 * The SDK's errors, mirroring the Python SDK's tree. Catch `InsienError` for everything the SDK
 * throws on purpose.
 *
 * InsienError
 * ├── APIError                 the REST API answered with an error status
 * │   ├── AuthenticationError  401: missing or wrong API key
 * │   ├── NotFoundError        404: no such sandbox (or not yours)
 * │   ├── RateLimitError       429: over a quota or rate; `retryAfter` says how long to wait
 * │   ├── NotSupportedError    501: the server's runtime cannot do this (Kubernetes: pause)
 * │   └── UnavailableError     503: Docker or the sandbox image is not available
 * ├── ConnectError             the service could not be reached at all
 * ├── RPCError                 the agent answered a request with an `error` message
 * ├── SandboxClosedError       the sandbox's connection ended (destroyed, agent gone)
 * └── AbortError               the caller's AbortSignal fired (the request is cancelled)
 */

export class InsienError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

export class ConnectError extends InsienError {}

export class APIError extends InsienError {
  readonly status: number;
  readonly code: string;
  readonly retryAfter: number | undefined;
  /** The server's message, without the status and code. */
  readonly detail: string;

  constructor(status: number, code: string, message: string, retryAfter?: number) {
    super(`${status} ${code}: ${message}`);
    this.status = status;
    this.code = code;
    this.detail = message;
    this.retryAfter = retryAfter;
  }
}

export class AuthenticationError extends APIError {}
export class NotFoundError extends APIError {}
export class RateLimitError extends APIError {}
/** The server's runtime cannot do this at all (on Kubernetes: pause, snapshots). */
export class NotSupportedError extends APIError {}
export class UnavailableError extends APIError {}

export class RPCError extends InsienError {
  readonly code: string;
  readonly detail: string;

  constructor(code: string, message: string) {
    super(`${code}: ${message}`);
    this.code = code;
    this.detail = message;
  }
}

export class SandboxClosedError extends InsienError {}

export class AbortError extends InsienError {}

const BY_STATUS: Record<number, typeof APIError> = {
  401: AuthenticationError,
  404: NotFoundError,
  429: RateLimitError,
  501: NotSupportedError,
  503: UnavailableError,
};

/** The typed error an error status stands for: the one place REST errors are mapped. */
export function apiError(status: number, code: string, message: string, retryAfter?: number): APIError {
  const Kind = BY_STATUS[status] ?? APIError;
  return new Kind(status, code, message, retryAfter);
}

/** Reads an error answer's `{code, message}` body and `Retry-After` header. */
export async function errorFromResponse(response: Response): Promise<APIError> {
  const text = await response.text().catch(() => '');
  let body: { code?: unknown; message?: unknown } = { message: text.slice(0, 500) };
  try {
    const parsed: unknown = JSON.parse(text);
    if (parsed !== null && typeof parsed === 'object') body = parsed as typeof body;
  } catch {
    // not JSON: the text itself is the message
  }
  const retry = response.headers.get('Retry-After') ?? '';
  return apiError(
    response.status,
    String(body.code ?? 'HTTP_ERROR'),
    String(body.message ?? ''),
    /^\d+$/.test(retry) ? Number(retry) : undefined,
  );
}

/** Throws AbortError if the signal has fired. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new AbortError('the operation was aborted', { cause: signal.reason });
}
