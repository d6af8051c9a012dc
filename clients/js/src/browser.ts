/** The browser entry: the platform's own `fetch` and `WebSocket`, no Node imports. */

export { Sandbox, type SandboxOptions, type ConnectionOptions } from './sandbox.js';
export { CommandHandle, Commands, Pty, type RunOptions, type PtyOptions, type OutputCallback, type BytesCallback } from './commands.js';
export { Files, WatchHandle, type UploadSource } from './files.js';
export { Network, Ports, type Forward } from './network.js';
export { Volume, IntegrityError, type VolumeMount, type VolumeInfo, type VolumeEntry, type VolumeConnection, type Written } from './volumes.js';
export { Secrets, type SecretBinding, type SecretInfo } from './secrets.js';
export { Code, type CodeContext, type CodeResult, type Execution, type ExecutionError, type RunCodeOptions } from './code.js';
export {
  InsienError,
  APIError,
  AuthenticationError,
  NotFoundError,
  RateLimitError,
  NotSupportedError,
  UnavailableError,
  ConnectError,
  RPCError,
  SandboxClosedError,
  AbortError,
} from './errors.js';
export { useWebSocket, type SocketFactory, type SocketLike } from './transport.js';
export { RECONNECT_WINDOW_MS } from './rpc.js';
export type * from './types.js';
