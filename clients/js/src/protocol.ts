// Generated from docs/protocol.schema.json by `python -m insien.protocol_spec`: do not edit.

/** Messages that answer a request without ending it; every other type is final. */
export const EVENT_TYPES: ReadonlySet<string> = new Set([
  'attachResponse',
  'codeOutput',
  'codeResult',
  'data',
  'fsEvents',
  'output',
  'spawnResponse',
  'watchStarted',
]);
